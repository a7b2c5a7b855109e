//! The bounded `reason` of every access line and of `jwtgate_requests_total`: why a request
//! was answered the way it was, precise enough to act on (an unknown `kid` is not a bad
//! signature), never carrying anything from the request.

macro_rules! reasons {
    ($($variant:ident => $label:literal, $outcome:ident, $scope:ident;)*) => {
        /// Why a request was allowed or refused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $label,)*
                }
            }

            /// The coarser `outcome` this reason belongs to.
            pub fn outcome(self) -> Outcome {
                match self {
                    $(Reason::$variant => Outcome::$outcome,)*
                }
            }

            /// Where the reason can arise: before a route is chosen, after, or both.
            pub fn scope(self) -> Scope {
                match self {
                    $(Reason::$variant => Scope::$scope,)*
                }
            }
        }
    };
}

/// Where in the request path a reason can arise, so that no series is created for a
/// combination that cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Before routing: counted under the `(none)` route only.
    Unrouted,
    /// After routing: counted under the route only.
    Routed,
    /// Either.
    Both,
}

reasons! {
    Allowed => "ok", Allowed, Routed;
    BadPath => "bad_path", BadRequest, Both;
    BadHost => "bad_host", BadRequest, Unrouted;
    BadMethod => "bad_method", BadRequest, Unrouted;
    UnderscoreHeader => "underscore_header", BadRequest, Unrouted;
    UntrustedCaller => "untrusted_caller", Forbidden, Unrouted;
    BadOriginal => "bad_original", BadRequest, Unrouted;
    IdentityHeader => "identity_header", BadRequest, Unrouted;
    AnonymousCredential => "anonymous_credential", BadRequest, Routed;
    NoRoute => "no_route", NotFound, Unrouted;
    MultipleTokens => "multiple_tokens", BadRequest, Routed;
    BodyTimeout => "body_timeout", BadRequest, Routed;
    BadBody => "bad_body", BadRequest, Routed;
    BodyTooLarge => "body_too_large", BadRequest, Routed;
    BadForwardedFor => "bad_forwarded_for", BadRequest, Routed;
    NoToken => "no_token", NoToken, Routed;
    Malformed => "malformed", InvalidToken, Routed;
    Algorithm => "algorithm", InvalidToken, Routed;
    UnsupportedCrit => "unsupported_crit", InvalidToken, Routed;
    UnknownIssuer => "unknown_issuer", InvalidToken, Routed;
    UnknownKid => "unknown_kid", InvalidToken, Routed;
    BadSignature => "bad_signature", InvalidToken, Routed;
    Expired => "expired", Expired, Routed;
    NotYetValid => "not_yet_valid", InvalidToken, Routed;
    IssuedInFuture => "issued_in_future", InvalidToken, Routed;
    Issuer => "issuer", InvalidToken, Routed;
    Audience => "audience", InvalidToken, Routed;
    Lifetime => "lifetime", InvalidToken, Routed;
    UnusableClaim => "unusable_claim", InvalidToken, Routed;
    ClientCert => "client_cert", Forbidden, Routed;
    CrossOrigin => "cross_origin", Forbidden, Routed;
    Scope => "scope", Forbidden, Routed;
    Claim => "claim", Forbidden, Routed;
    Revoked => "revoked", Revoked, Routed;
    RevocationsNotReady => "revocations_not_ready", Unavailable, Routed;
    RevocationsStale => "revocations_stale", Unavailable, Routed;
    KeysUnavailable => "keys_unavailable", Unavailable, Routed;
    Overloaded => "overloaded", Unavailable, Routed;
    UpstreamUnavailable => "upstream_unavailable", UpstreamError, Routed;
    UpstreamTimeout => "upstream_timeout", UpstreamError, Routed;
    UpstreamBadUpgrade => "upstream_bad_upgrade", UpstreamError, Routed;
}

impl Reason {
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the reason can be counted under a route (`routed`) or under `(none)`.
    pub fn possible(self, routed: bool) -> bool {
        match self.scope() {
            Scope::Both => true,
            Scope::Routed => routed,
            Scope::Unrouted => !routed,
        }
    }
}

/// The `outcome` label of `jwtgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    BadRequest,
    NotFound,
    NoToken,
    InvalidToken,
    Expired,
    Revoked,
    Forbidden,
    Unavailable,
    UpstreamError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::BadRequest => "bad_request",
            Outcome::NotFound => "not_found",
            Outcome::NoToken => "no_token",
            Outcome::InvalidToken => "invalid_token",
            Outcome::Expired => "expired",
            Outcome::Revoked => "revoked",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "unavailable",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}
