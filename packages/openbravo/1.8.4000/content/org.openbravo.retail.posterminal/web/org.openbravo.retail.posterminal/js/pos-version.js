OB.POS.version = '1.8.4000';
