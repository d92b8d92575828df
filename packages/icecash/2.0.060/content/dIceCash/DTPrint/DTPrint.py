#!/usr/bin/python
# -*- coding: utf-8
""" DTPrint: thermal and fiscal printers over HTTP/XML. """

VERSION = '2.0.060'
