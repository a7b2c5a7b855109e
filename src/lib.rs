//! # jwtgate
//!
//! A reverse proxy that lets a request through only when it carries a valid JWT that
//! satisfies the policy of the route it matches, and hands the upstream trusted identity
//! headers.
//!
//! # Layout
//!
//! The request path, in order (see [`proxy::handle`]):
//!
//! 1. [`server`] — listeners, connection limits, HTTP/1.1 and HTTP/2, the admin listener.
//! 2. [`route`] — path normalization (what is matched is what is forwarded) and the
//!    first-match route table.
//! 3. [`token`] — the token from the route's sources, exactly one.
//! 4. [`verify`] — JOSE header, issuer, key ([`verify::keys`]), signature, claims, the
//!    verified-token cache, and the route's `require` ([`verify::policy`]).
//! 5. [`headers`] — hop-by-hop and identity-header stripping, identity injection,
//!    `X-Forwarded-*`.
//! 6. [`upstream`] — pooled clients, 502/504.
//! 7. [`metrics`] and the access log.
//!
//! [`config`] parses and validates the YAML; [`error`] maps every refusal to its answer in
//! one place; [`dev`] is the all-in-one `jwtgate dev`.

pub mod config;

pub mod server;

pub mod tls;

pub mod route;

pub mod token;

pub mod verify;

pub mod revocation;

pub mod headers;

pub mod upstream;

pub mod live;

pub mod proxy;

pub mod control;

pub mod error;

pub mod metrics;

pub mod dev;

pub mod logging;
