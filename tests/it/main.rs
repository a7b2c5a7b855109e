//! The integration tests: one binary, one support module. Everything talks to real servers
//! over loopback — an identity provider (JWKS, discovery), upstreams, the gateway and
//! control plane as library and as the release binary, PostgreSQL.

mod support;

mod availability;
mod cli;
mod container;
mod demo_keys;
mod durability;
mod forward_auth;
mod hardening;
mod idp;
mod jwks;
mod layers;
mod operations;
mod proxy;
mod revocation;
mod socketio;
mod ssf;
mod store;
mod tls;
mod upstream_h1;
mod verify;
mod websocket;
mod writes;
