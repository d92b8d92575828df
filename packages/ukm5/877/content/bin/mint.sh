#!/bin/sh
# Starts the UKM 5 register program with the settings in conf/.
cd "$(dirname "$0")/.." || exit 1
exec java -Xmx512m -cp 'lib/*' ukm5.pos.Main --config conf/mint.properties
