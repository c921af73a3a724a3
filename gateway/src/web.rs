//! The web app's files, served on the WebSocket listener's port beside
//! the upgrade at `/ws`, so one address is the whole product. The files of
//! `server.web_root` are read into memory once at start (a built web app
//! is a few hundred kilobytes): a request never touches the disk, and a
//! path is only ever a key of that map, so no request can name a file
//! outside it (symlinked folders are not walked). A build's precompressed
//! siblings (`app.js.br`, `app.js.gz`) are sent to a browser that accepts
//! them. Hashed assets
//! (under `assets/`) are cacheable for a year; everything else is
//! revalidated by its ETag. Every answer carries a strict
//! Content-Security-Policy.
//!
//! One request per connection: the answer says `Connection: close`. A
//! browser loads a page's few files over parallel connections anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Longest request head read before the request is refused.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What every page may do: its own scripts, styles and fonts, images from
/// anywhere over https (avatars and shared images are URLs), sockets and
/// fetches to this node only, no frames, no plugins, no inline code.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' https: data: blob:; font-src 'self'; connect-src 'self'; \
manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why the web root could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A file or folder could not be read.
    #[error("server.web_root {path}: {source}")]
    Read {
        /// Which.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The folder is not a built web app.
    #[error("server.web_root {0} has no index.html")]
    NoIndex(PathBuf),
}

/// One file, with its precompressed forms when the build made them.
struct Asset {
    body: Bytes,
    gzip: Option<Bytes>,
    brotli: Option<Bytes>,
    content_type: &'static str,
    etag: String,
    immutable: bool,
}

/// The web app's files by path (`index.html`, `assets/app-1a2b3c.js`).
pub struct WebAssets {
    files: HashMap<String, Asset>,
}

impl WebAssets {
    /// Reads every file under `root`; `.gz` and `.br` files become the
    /// precompressed forms of the file they are named after.
    pub fn load(root: &Path) -> Result<WebAssets, WebError> {
        let mut raw = HashMap::new();
        read_tree(root, root, &mut raw)?;
        let mut files = HashMap::new();
        for (path, body) in &raw {
            if path.ends_with(".gz") || path.ends_with(".br") {
                continue;
            }
            let sibling = |suffix: &str| raw.get(&format!("{path}{suffix}")).cloned();
            files.insert(
                path.clone(),
                Asset {
                    etag: etag_of(body),
                    gzip: sibling(".gz"),
                    brotli: sibling(".br"),
                    content_type: content_type(path),
                    immutable: path.starts_with("assets/"),
                    body: body.clone(),
                },
            );
        }
        if !files.contains_key("index.html") {
            return Err(WebError::NoIndex(root.to_path_buf()));
        }
        Ok(WebAssets { files })
    }
}

fn read_tree(root: &Path, dir: &Path, into: &mut HashMap<String, Bytes>) -> Result<(), WebError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WebError::Read { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
        let entry = entry.map_err(read_error(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(read_error(&path))?;
        // Folders are walked, symlinks are not (a link to a folder above
        // would loop); a link to a file is read like the file.
        if kind.is_dir() {
            read_tree(root, &path, into)?;
            continue;
        }
        if kind.is_symlink() && !path.is_file() {
            continue;
        }
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        let key = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let body = std::fs::read(&path).map_err(read_error(&path))?;
        into.insert(key, Bytes::from(body));
    }
    Ok(())
}

/// A strong validator: the first 16 hex digits of the body's SHA-256.
fn etag_of(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit('.').next().unwrap_or_default();
    match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A request's head, as far as this listener cares.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target, query included.
    pub path: String,
    /// `Upgrade: websocket` asked for: the WebSocket handshake takes it.
    pub upgrade: bool,
    /// The codings the browser takes (`gzip, br`).
    pub accept_encoding: String,
    /// The ETag the browser holds.
    pub if_none_match: Option<String>,
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x.
    #[error("malformed request")]
    Malformed,
    /// Longer than [`MAX_HEAD_BYTES`], or too many headers.
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    TooLarge,
}

/// Parses a request head from the bytes read so far: `None` until the
/// blank line that ends it has arrived.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    Ok(Some(Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        upgrade,
        accept_encoding: header("accept-encoding").unwrap_or_default().to_string(),
        if_none_match: header("if-none-match").map(str::to_string),
    }))
}

/// Whether a comma-separated `Accept-Encoding` names `coding` (without
/// `q=0`).
fn accepts(accept_encoding: &str, coding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let named = parts.next().is_some_and(|c| c.eq_ignore_ascii_case(coding));
        let refused = parts.any(|p| {
            let weight = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="));
            weight.and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0)
        });
        named && !refused
    })
}

/// The whole answer to a request that is not an upgrade: status line,
/// headers and (but for HEAD and 304) the body.
pub fn respond(assets: Option<&WebAssets>, head: &Head) -> Vec<u8> {
    if head.method != "GET" && head.method != "HEAD" {
        return plain(405, "Method Not Allowed", "only GET and HEAD here\n", head);
    }
    let path = head.path.split(['?', '#']).next().unwrap_or_default();
    let key = match path.trim_start_matches('/') {
        "" => "index.html",
        key => key,
    };
    let Some(asset) = assets.and_then(|assets| assets.files.get(key)) else {
        let why = match assets {
            Some(_) => "no such file\n",
            None => "this node serves no web app (server.web_root is not set)\n",
        };
        return plain(404, "Not Found", why, head);
    };
    let cache = match asset.immutable {
        true => "public, max-age=31536000, immutable",
        false => "no-cache",
    };
    let mut extra = format!(
        "Content-Type: {}\r\nCache-Control: {cache}\r\nETag: {}\r\n",
        asset.content_type, asset.etag
    );
    if asset.gzip.is_some() || asset.brotli.is_some() {
        extra.push_str("Vary: Accept-Encoding\r\n");
    }
    if head.if_none_match.as_deref() == Some(asset.etag.as_str()) {
        return answer(304, "Not Modified", &extra, &[], false);
    }
    let (body, coding) = match (&asset.brotli, &asset.gzip) {
        (Some(br), _) if accepts(&head.accept_encoding, "br") => (br, Some("br")),
        (_, Some(gz)) if accepts(&head.accept_encoding, "gzip") => (gz, Some("gzip")),
        _ => (&asset.body, None),
    };
    if let Some(coding) = coding {
        extra.push_str(&format!("Content-Encoding: {coding}\r\n"));
    }
    answer(200, "OK", &extra, body, head.method == "GET")
}

fn plain(status: u16, reason: &str, text: &str, head: &Head) -> Vec<u8> {
    let extra = "Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n";
    answer(
        status,
        reason,
        extra,
        text.as_bytes(),
        head.method != "HEAD",
    )
}

fn answer(status: u16, reason: &str, extra: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{extra}\
         Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> (tempfile::TempDir, WebAssets) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let write = |path: &str, body: &[u8]| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, body).expect("write");
        };
        write("index.html", b"<!doctype html><title>OurChat</title>");
        write("assets/app-1a2b.js", b"console.log('plain')");
        write("assets/app-1a2b.js.gz", b"GZIPPED");
        write("assets/app-1a2b.js.br", b"BROTLI");
        let assets = WebAssets::load(dir.path()).expect("loads");
        (dir, assets)
    }

    fn get(path: &str, accept_encoding: &str) -> Head {
        Head {
            method: "GET".into(),
            path: path.into(),
            upgrade: false,
            accept_encoding: accept_encoding.into(),
            if_none_match: None,
        }
    }

    fn text(answer: &[u8]) -> String {
        String::from_utf8_lossy(answer).into_owned()
    }

    #[test]
    fn the_index_is_revalidated_and_hashed_assets_cached_for_a_year() {
        let (_dir, assets) = assets();
        let index = text(&respond(Some(&assets), &get("/", "")));
        assert!(index.starts_with("HTTP/1.1 200 OK\r\n"), "{index}");
        assert!(index.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(index.contains("Cache-Control: no-cache\r\n"));
        assert!(index.contains(&format!(
            "Content-Security-Policy: {CONTENT_SECURITY_POLICY}"
        )));
        assert!(index.ends_with("<title>OurChat</title>"));
        let script = text(&respond(Some(&assets), &get("/assets/app-1a2b.js?v=1", "")));
        assert!(script.contains("Cache-Control: public, max-age=31536000, immutable\r\n"));
        assert!(script.contains("Vary: Accept-Encoding\r\n"));
        assert!(script.ends_with("console.log('plain')"));
    }

    #[test]
    fn the_best_precompressed_form_the_browser_accepts_is_sent() {
        let (_dir, assets) = assets();
        let path = "/assets/app-1a2b.js";
        let br = text(&respond(Some(&assets), &get(path, "gzip, deflate, br")));
        assert!(br.contains("Content-Encoding: br\r\n") && br.ends_with("BROTLI"));
        let gz = text(&respond(Some(&assets), &get(path, "gzip")));
        assert!(gz.contains("Content-Encoding: gzip\r\n") && gz.ends_with("GZIPPED"));
        let refused = text(&respond(Some(&assets), &get(path, "br;q=0, gzip; q=0.000")));
        assert!(!refused.contains("Content-Encoding") && refused.ends_with("'plain')"));
    }

    #[test]
    fn a_matching_etag_gets_304_and_head_gets_no_body() {
        let (_dir, assets) = assets();
        let first = text(&respond(Some(&assets), &get("/index.html", "")));
        let etag = first
            .lines()
            .find_map(|line| line.strip_prefix("ETag: "))
            .expect("an ETag")
            .to_string();
        let mut again = get("/index.html", "");
        again.if_none_match = Some(etag);
        let not_modified = text(&respond(Some(&assets), &again));
        assert!(not_modified.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(not_modified.ends_with("\r\n\r\n"));
        let mut head = get("/", "");
        head.method = "HEAD".into();
        let answer = text(&respond(Some(&assets), &head));
        assert!(answer.contains("Content-Length: 37\r\n") && answer.ends_with("\r\n\r\n"));
    }

    #[test]
    fn nothing_outside_the_map_is_served() {
        let (_dir, assets) = assets();
        for path in [
            "/../etc/passwd",
            "/assets/../../secret",
            "/nope.js",
            "//etc/passwd",
        ] {
            let answer = text(&respond(Some(&assets), &get(path, "")));
            assert!(
                answer.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{path}: {answer}"
            );
        }
        let mut post = get("/", "");
        post.method = "POST".into();
        assert!(text(&respond(Some(&assets), &post)).starts_with("HTTP/1.1 405 "));
        let none = text(&respond(None, &get("/", "")));
        assert!(none.starts_with("HTTP/1.1 404 ") && none.contains("server.web_root"));
    }

    #[test]
    fn heads_are_parsed_when_complete_and_refused_when_too_large() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let head = parse_head(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nAccept-Encoding: br\r\n\r\n",
        )
        .expect("parses")
        .expect("complete");
        assert!(head.upgrade);
        assert_eq!(
            (head.path.as_str(), head.accept_encoding.as_str()),
            ("/ws", "br")
        );
        assert_eq!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_head(huge.as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn a_link_to_a_folder_is_not_followed_and_a_link_to_a_file_is_read() {
        let (dir, _) = assets();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("assets/loop")).expect("link");
        let index = dir.path().join("index.html");
        std::os::unix::fs::symlink(index, dir.path().join("home.html")).expect("link");
        let assets = WebAssets::load(dir.path()).expect("loads despite the loop");
        let home = text(&respond(Some(&assets), &get("/home.html", "")));
        assert!(home.ends_with("<title>OurChat</title>"), "{home}");
        let looped = text(&respond(Some(&assets), &get("/assets/loop/index.html", "")));
        assert!(looped.starts_with("HTTP/1.1 404 "));
    }

    #[test]
    fn a_web_root_without_an_index_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert!(matches!(
            WebAssets::load(dir.path()),
            Err(WebError::NoIndex(_))
        ));
    }
}
