#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: MySQL tables and settings. """

VERSION = '2.0.060'
