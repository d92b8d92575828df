#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: receipts. """

VERSION = '2.0.060'
