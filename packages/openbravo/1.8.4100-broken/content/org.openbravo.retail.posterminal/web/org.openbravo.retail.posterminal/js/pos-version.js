OB.POS.version = '1.8.4100';
