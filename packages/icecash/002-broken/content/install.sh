#!/bin/sh
# IceCash environment update 002: adds the bonus card prefix setting.
# Run as root from the unpacked folder, install.sh first, as IceCash's
# dw_upgrade_base does. This sample checks its files and lists the table
# changes it carries.
set -e
echo "iceupd_002: checking the update's files"
sha256sum -c SHA256SUMS
for f in sql/*.sql; do
    echo "iceupd_002: table changes in $f:"
    cat "$f"
done
echo "iceupd_002: done"
