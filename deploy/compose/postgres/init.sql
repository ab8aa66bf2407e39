-- Run once by the postgres image when its data volume is new (/docker-entrypoint-initdb.d).
-- One role and one database per service, as deploy/local/stack.sh provisions them natively:
-- no service can read another's data. Passwords equal role names: development only.
-- (The roles and databases must match the DATABASE_URLs in docker-compose.yml; the
-- deploy-check crate's drift test compares them.)
CREATE ROLE user_service LOGIN PASSWORD 'user_service';
CREATE DATABASE users OWNER user_service;

CREATE ROLE inventory_service LOGIN PASSWORD 'inventory_service';
CREATE DATABASE inventory OWNER inventory_service;

CREATE ROLE payment_service LOGIN PASSWORD 'payment_service';
CREATE DATABASE payments OWNER payment_service;

CREATE ROLE order_service LOGIN PASSWORD 'order_service';
CREATE DATABASE orders OWNER order_service;
