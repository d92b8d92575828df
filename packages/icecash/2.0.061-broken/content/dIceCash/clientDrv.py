#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: client of DTPrint. """

VERSION = '2.0.061'
