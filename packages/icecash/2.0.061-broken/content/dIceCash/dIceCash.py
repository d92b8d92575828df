#!/usr/bin/python
# -*- coding: utf-8

"""
    Web Kassa IceCash 2.0
    License GPL
"""

import dbIceCash
import chIceCash
import zIceCash
import clientIceServ
import clientDrv
import my

MYSQL_HOST  = 'localhost'
VERSION     = '2.0.061'
