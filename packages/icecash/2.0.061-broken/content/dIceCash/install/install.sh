#!/bin/sh
# First installation: databases and systemd services.
exit 0
