#!/usr/bin/python
# -*- coding: utf-8
""" IceCash 2.0: date and time helpers. """

VERSION = '2.0.060'
