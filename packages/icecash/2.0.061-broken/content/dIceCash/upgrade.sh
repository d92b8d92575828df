#!/bin/sh
# Run after a program upgrade.
exit 0
