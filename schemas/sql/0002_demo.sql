-- 0002_demo.sql: the demo application's tables (etc/ferry.yaml routes).
--
-- users.id has no default: the demo loader gives ids explicitly, and
-- POST /users takes coalesce($1, nextval('users_id_seq')), so a client may
-- pick an id or let the sequence choose.  The loader moves the sequence
-- past the largest id it inserted.

CREATE TABLE IF NOT EXISTS public.users (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE IF NOT EXISTS public.users_id_seq OWNED BY public.users.id;

CREATE TABLE IF NOT EXISTS public.orders (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES public.users (id),
    amount      numeric(12,2) NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_user_id_idx ON public.orders (user_id);
