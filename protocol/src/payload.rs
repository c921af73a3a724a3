//! What a well-formed message of each type carries, checked the same way
//! wherever a message enters (client protocol, gRPC). Pure functions: the
//! error text names the field, so a client knows what to fix.

use crate::pb::{LocationPayload, MediaPayload, MessageType, SendMessageRequest};

/// Bounds that are configuration, not protocol.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest text (or caption), bytes.
    pub max_content_bytes: usize,
    /// Largest media file a message may point at, bytes.
    pub max_media_bytes: u64,
}

/// Longest media URL.
const MAX_URL_CHARS: usize = 2048;
/// Longest file name or location title.
const MAX_NAME_CHARS: usize = 255;
/// Longest voice message.
const MAX_VOICE_MS: u32 = 10 * 60 * 1000;
/// Longest video.
const MAX_VIDEO_MS: u32 = 6 * 3600 * 1000;
/// Largest image or video side, pixels.
const MAX_SIDE_PX: u32 = 32_768;

/// Checks a send's type, content and payload; `Err` says what is wrong.
pub fn validate(request: &SendMessageRequest, limits: &Limits) -> Result<MessageType, String> {
    let kind = MessageType::try_from(request.message_type)
        .map_err(|_| format!("unknown message_type {}", request.message_type))?;
    if request.content.len() > limits.max_content_bytes {
        return Err(format!(
            "content exceeds {} bytes",
            limits.max_content_bytes
        ));
    }
    let media = request.media.as_deref();
    let location = request.location.as_deref();
    match kind {
        MessageType::Text => {
            if request.content.is_empty() {
                return Err("a text message needs content".into());
            }
            refuse_payloads(media, location, "text")?;
        }
        MessageType::Location => {
            if media.is_some() {
                return Err("a location message carries no media".into());
            }
            let location = location.ok_or("a location message needs location")?;
            check_location(location)?;
        }
        MessageType::Image | MessageType::Voice | MessageType::Video | MessageType::File => {
            if location.is_some() {
                return Err(format!("a {} message carries no location", name(kind)));
            }
            let media = media.ok_or_else(|| format!("a {} message needs media", name(kind)))?;
            check_media(kind, media, limits)?;
        }
        MessageType::GroupEvent => {
            return Err("group events are written by the server, not sent".into());
        }
    }
    Ok(kind)
}

fn name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Text => "text",
        MessageType::Image => "image",
        MessageType::Voice => "voice",
        MessageType::Video => "video",
        MessageType::File => "file",
        MessageType::Location => "location",
        MessageType::GroupEvent => "group event",
    }
}

fn refuse_payloads(
    media: Option<&MediaPayload>,
    location: Option<&LocationPayload>,
    kind: &str,
) -> Result<(), String> {
    if media.is_some() || location.is_some() {
        return Err(format!("a {kind} message carries no media or location"));
    }
    Ok(())
}

fn check_media(kind: MessageType, media: &MediaPayload, limits: &Limits) -> Result<(), String> {
    let url_ok = (media.url.starts_with("https://") || media.url.starts_with("http://"))
        && media.url.len() > "https://".len()
        && media.url.chars().count() <= MAX_URL_CHARS
        && !media
            .url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !url_ok {
        return Err("media.url must be an http(s) URL of at most 2048 characters".into());
    }
    if media.size_bytes == 0 || media.size_bytes > limits.max_media_bytes {
        return Err(format!(
            "media.size_bytes must be 1..={}",
            limits.max_media_bytes
        ));
    }
    let mime_prefix = match kind {
        MessageType::Image => Some("image/"),
        MessageType::Voice => Some("audio/"),
        MessageType::Video => Some("video/"),
        _ => None,
    };
    let mime_ok = media.mime.contains('/')
        && media.mime.len() <= 127
        && mime_prefix.is_none_or(|prefix| media.mime.starts_with(prefix));
    if !mime_ok {
        return Err(match mime_prefix {
            Some(prefix) => format!("media.mime must be {prefix}*"),
            None => "media.mime must be a MIME type".into(),
        });
    }
    let sides = |media: &MediaPayload| {
        (1..=MAX_SIDE_PX).contains(&media.width) && (1..=MAX_SIDE_PX).contains(&media.height)
    };
    match kind {
        MessageType::Image if !sides(media) => {
            Err("media.width and media.height must be 1..=32768".into())
        }
        MessageType::Voice if !(1..=MAX_VOICE_MS).contains(&media.duration_ms) => {
            Err("media.duration_ms must be 1..=600000 for voice".into())
        }
        MessageType::Video if !(1..=MAX_VIDEO_MS).contains(&media.duration_ms) => {
            Err("media.duration_ms must be 1..=21600000 for video".into())
        }
        MessageType::Video if !sides(media) => {
            Err("media.width and media.height must be 1..=32768".into())
        }
        MessageType::File
            if media.file_name.is_empty()
                || media.file_name.chars().count() > MAX_NAME_CHARS
                || media.file_name.chars().any(|c| c.is_control() || c == '/') =>
        {
            Err("media.file_name must be 1-255 characters, no '/' or control characters".into())
        }
        _ => Ok(()),
    }
}

fn check_location(location: &LocationPayload) -> Result<(), String> {
    if !location.latitude.is_finite() || !(-90.0..=90.0).contains(&location.latitude) {
        return Err("location.latitude must be within -90..90".into());
    }
    if !location.longitude.is_finite() || !(-180.0..=180.0).contains(&location.longitude) {
        return Err("location.longitude must be within -180..180".into());
    }
    if location.title.chars().count() > MAX_NAME_CHARS
        || location.title.chars().any(char::is_control)
    {
        return Err("location.title must be at most 255 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_content_bytes: 100,
        max_media_bytes: 1000,
    };

    fn send(kind: MessageType, content: &str) -> SendMessageRequest {
        SendMessageRequest {
            message_type: kind as i32,
            content: content.into(),
            ..Default::default()
        }
    }

    fn media(url: &str, size: u64, mime: &str) -> MediaPayload {
        MediaPayload {
            url: url.into(),
            size_bytes: size,
            mime: mime.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_type_has_a_valid_form() {
        assert!(validate(&send(MessageType::Text, "hi"), &LIMITS).is_ok());
        let mut image = send(MessageType::Image, "");
        image.media = Some(Box::new(MediaPayload {
            width: 10,
            height: 20,
            ..media("https://cdn/x.png", 10, "image/png")
        }));
        assert!(validate(&image, &LIMITS).is_ok());
        let mut voice = send(MessageType::Voice, "");
        voice.media = Some(Box::new(MediaPayload {
            duration_ms: 3000,
            ..media("https://cdn/v.ogg", 10, "audio/ogg")
        }));
        assert!(validate(&voice, &LIMITS).is_ok());
        let mut video = send(MessageType::Video, "look");
        video.media = Some(Box::new(MediaPayload {
            duration_ms: 3000,
            width: 640,
            height: 480,
            ..media("https://cdn/v.mp4", 10, "video/mp4")
        }));
        assert!(validate(&video, &LIMITS).is_ok());
        let mut file = send(MessageType::File, "");
        file.media = Some(Box::new(MediaPayload {
            file_name: "report.pdf".into(),
            ..media("http://files/r", 10, "application/pdf")
        }));
        assert!(validate(&file, &LIMITS).is_ok());
        let mut location = send(MessageType::Location, "");
        location.location = Some(Box::new(LocationPayload {
            latitude: 48.85,
            longitude: 2.35,
            title: "Paris".into(),
        }));
        assert!(validate(&location, &LIMITS).is_ok());
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        let cases: Vec<(SendMessageRequest, &str)> = vec![
            (send(MessageType::Text, ""), "needs content"),
            (send(MessageType::Text, &"x".repeat(101)), "content exceeds"),
            (send(MessageType::Image, ""), "needs media"),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("ftp://x", 10, "image/png"))),
                    ..send(MessageType::Image, "")
                },
                "media.url",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 5000, "image/png"))),
                    ..send(MessageType::Image, "")
                },
                "media.size_bytes",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 10, "text/html"))),
                    ..send(MessageType::Image, "")
                },
                "media.mime",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 10, "image/png"))),
                    ..send(MessageType::Image, "")
                },
                "media.width",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 10, "audio/ogg"))),
                    ..send(MessageType::Voice, "")
                },
                "media.duration_ms",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 10, "application/zip"))),
                    ..send(MessageType::File, "")
                },
                "media.file_name",
            ),
            (
                SendMessageRequest {
                    location: Some(Box::new(LocationPayload {
                        latitude: 91.0,
                        ..Default::default()
                    })),
                    ..send(MessageType::Location, "")
                },
                "location.latitude",
            ),
            (
                SendMessageRequest {
                    location: Some(Box::new(LocationPayload {
                        longitude: f64::NAN,
                        ..Default::default()
                    })),
                    ..send(MessageType::Location, "")
                },
                "location.longitude",
            ),
            (
                SendMessageRequest {
                    media: Some(Box::new(media("https://cdn/x", 10, "image/png"))),
                    ..send(MessageType::Text, "hi")
                },
                "carries no media",
            ),
            (
                SendMessageRequest {
                    message_type: 77,
                    ..send(MessageType::Text, "hi")
                },
                "unknown message_type",
            ),
        ];
        for (request, expected) in cases {
            let err = validate(&request, &LIMITS).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
