#!/usr/bin/python
# -*- coding: utf-8
""" Exchange with IceServ, run from crontab. """
