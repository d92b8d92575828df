#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: exchange with IceServ. """

VERSION = '2.0.061'
