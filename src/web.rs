//! The lens: the page the daemon serves at `GET /` (docs/SERVER.md, "The lens"). Every file of it
//! is in `src/web/` and compiled into the binary here: plain HTML, CSS and JavaScript modules, no
//! framework, no build step, nothing fetched from elsewhere. The page calls the daemon's own
//! routes (`/v1/models`, `/v1/score`, `/openapi.json`) with the bearer token it was given in its
//! address's fragment; its files are static and reveal nothing, so they need no token.
//!
//! This module is data and two pure functions; `server::routes::page` serves it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its name under `/web/` (the page itself is served at `/`).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// FNV-1a of the bytes, computed at compile time: the `ETag`.
    pub hash: u64,
}

impl Asset {
    /// The `ETag` header's value: the hash, quoted.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

const fn asset(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        name,
        content_type,
        body,
        hash: fnv1a(body),
    }
}

/// 64-bit FNV-1a: enough to tell one build's file from another's for `If-None-Match`.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page, served at `/`.
pub const PAGE: Asset = asset(
    "index.html",
    "text/html; charset=utf-8",
    include_bytes!("web/index.html"),
);

/// The page's other files, served at `/web/NAME`.
pub const ASSETS: &[Asset] = &[
    asset("app.js", JS, include_bytes!("web/app.js")),
    asset("lens.js", JS, include_bytes!("web/lens.js")),
    asset("reference.js", JS, include_bytes!("web/reference.js")),
    asset(
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("web/style.css"),
    ),
    asset("icon.svg", "image/svg+xml", include_bytes!("web/icon.svg")),
];

/// The file named `name` under `/web/`.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The Content-Security-Policy of every file of the page: scripts, styles and requests only from
/// the daemon itself, no inline script or style, no plugin, no form, no frame around it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The headers every file of the page is served with, besides its type and cache headers.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// The page's address on a TCP listener at `address`, with `token` in the fragment (which a browser
/// never sends to the server): `http://127.0.0.1:8765/#token=…`. An unspecified address
/// (`0.0.0.0`, `[::]`) is shown as the loopback one of its family.
pub fn url(address: SocketAddr, token: Option<&str>) -> String {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let base = format!("http://{}/", SocketAddr::new(ip, address.port()));
    match token {
        Some(token) => format!("{base}#token={}", percent_encode(token)),
        None => base,
    }
}

/// `text` with every byte outside RFC 3986's unreserved characters written `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_carries_the_token_in_its_fragment() {
        let address: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        assert_eq!(
            url(address, Some("ab12")),
            "http://127.0.0.1:8765/#token=ab12"
        );
        assert_eq!(url(address, None), "http://127.0.0.1:8765/");
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(url(v6, Some("t")), "http://[::1]:9/#token=t");
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(url(any, None), "http://127.0.0.1:80/");
        let any6: SocketAddr = "[::]:80".parse().unwrap();
        assert_eq!(url(any6, None), "http://[::1]:80/");
        // Any printable token survives the trip: what the page's URLSearchParams decodes.
        assert_eq!(
            url(address, Some("a+b&c#d%e=f/g")),
            "http://127.0.0.1:8765/#token=a%2Bb%26c%23d%25e%3Df%2Fg"
        );
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let page = std::str::from_utf8(PAGE.body).expect("UTF-8");
        let mut named = Vec::new();
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.body);
            // Each script imports its siblings by their served path.
            for part in text
                .split("\"/web/")
                .skip(1)
                .chain(page.split("\"/web/").skip(1))
            {
                named.push(part.split('"').next().unwrap_or_default().to_owned());
            }
        }
        assert!(named.iter().any(|n| n == "app.js"), "{named:?}");
        for name in &named {
            assert!(find(name).is_some(), "/web/{name} is named but not served");
        }
        for asset in ASSETS {
            assert!(
                named.iter().any(|n| n == asset.name),
                "{} is served but nothing names it",
                asset.name
            );
        }
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let page = std::str::from_utf8(PAGE.body).expect("UTF-8");
        for needle in ["<script>", "style=", "onload=", "onclick=", "javascript:"] {
            assert!(!page.contains(needle), "index.html has {needle}");
        }
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            // Model and user text goes in as text: the scripts never parse HTML.
            for needle in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "document.write",
            ] {
                assert!(!text.contains(needle), "{} uses {needle}", asset.name);
            }
        }
    }

    #[test]
    fn etags_differ_with_the_bytes() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(PAGE.etag().len(), 18);
        assert_eq!(PAGE.hash, fnv1a(PAGE.body));
    }
}
