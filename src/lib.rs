//! # jwtgate
//!
//! A reverse proxy that lets a request through only when it carries a valid, unrevoked JWT
//! that satisfies the policy of the route it matches, and hands the upstream trusted
//! identity headers.
//!
//! # Layout
//!
//! Modules form a ladder; each names only modules below it:
//!
//! ```text
//! leaves        clock  backoff  http_client  path  http1        (name nothing in the crate)
//! config        one file per section: raw + typed structs, validation, a problem table
//! data plane    error metrics logging tls route token headers upstream
//!               revocation verify live proxy server             (never names `control`)
//! control plane control::{api, error, idp, store, client}      (beside the data plane;
//!               shares only the revocation wire types, the verifier and the metrics registry)
//! wiring        app: starts gateway, control plane and single-node mode; reload, shutdown
//!               dev: `jwtgate dev`, built on app
//! CLI           main.rs
//! ```
//!
//! # The request path
//!
//! 1. Accept — [`server`]: listeners, TLS ([`tls`]), connection limits, HTTP/1.1 and HTTP/2.
//! 2. Normalize the target — [`path`]: what is matched is what is forwarded.
//! 3. Route — [`route`]: first match in file order.
//! 4. Token — [`token`]: from the route's sources, exactly one.
//! 5. Verify — [`verify`]: JOSE header, issuer, key ([`verify::keys`]), signature, claims,
//!    the verified-token cache.
//! 6. Revocation — [`revocation::Revocations::check`]: `jti`, `sid`, `sub` cutoff, staleness.
//! 7. Authorize — [`verify::policy`]: the route's `require`.
//! 8. Mutate — [`headers`]: hop-by-hop and identity-header stripping, identity injection,
//!    `X-Forwarded-*`, the token removed.
//! 9. Forward — [`upstream`]: pooled clients, 502/504; a 101 becomes a tunnel and a stream
//!    is registered ([`live`]) so revocation or expiry ends it.
//! 10. Observe — [`metrics`] and the access log.
//!
//! [`proxy`] runs steps 2–10 as one readable function; [`error`] maps every refusal to its
//! answer in one place.

pub mod backoff;

pub mod clock;

pub mod http1;

pub mod http_client;

pub mod path;

pub mod config;

pub mod reason;

pub mod error;

pub mod metrics;

pub mod logging;

pub mod tls;

pub mod route;

pub mod token;

pub mod headers;

pub mod upstream;

pub mod revocation;

pub mod verify;

pub mod live;

pub mod proxy;

pub mod server;

pub mod control;

pub mod app;

pub mod dev;

pub mod keygen;
