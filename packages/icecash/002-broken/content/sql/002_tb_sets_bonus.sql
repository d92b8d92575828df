INSERT INTO tb_sets (`group`, name, value) VALUES ('client', 'bonus_prefix', '778');
