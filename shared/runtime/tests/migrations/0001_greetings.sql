-- A table for the runtime's own tests: proves migrations run at start.
CREATE TABLE greetings (
    id   BIGINT PRIMARY KEY,
    text TEXT NOT NULL
);
INSERT INTO greetings (id, text) VALUES (1, 'hello');
