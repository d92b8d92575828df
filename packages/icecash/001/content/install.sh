#!/bin/sh
# IceCash environment update 001: adds the EGAIS columns to the receipt header table.
# Run as root from the unpacked folder, install.sh first, as IceCash's
# dw_upgrade_base does. This sample checks its files and lists the table
# changes it carries.
set -e
echo "iceupd_001: checking the update's files"
sha256sum -c SHA256SUMS
for f in sql/*.sql; do
    echo "iceupd_001: table changes in $f:"
    cat "$f"
done
echo "iceupd_001: done"
