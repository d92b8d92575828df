#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: Z reports. """

VERSION = '2.0.061'
