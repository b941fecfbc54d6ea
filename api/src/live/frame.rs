//! Encoded messages waiting to be written, and the part of them many clients share.
//!
//! The heavy part of a message — an event, a read model's change, its snapshot — is the
//! same for every subscriber; only the subscription's `id` differs. So it is encoded once
//! (by the hub or the follower) into a reference-counted [`Utf8Bytes`], and a queued frame
//! holds a small head of its own plus that shared body: a thousand subscribers of one
//! board cost one copy of a delta, not a thousand. The frame is joined into one text only
//! as it is written.

use axum::extract::ws::Utf8Bytes;

/// One text message for a client.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Encoded for this client alone (replies, errors, replays read for it).
    Own(String),
    /// The same bytes for every client (the original feed's events).
    Shared(Utf8Bytes),
    /// A head of this subscription's (`{"type":"delta","id":"…",`), a body shared by every
    /// subscriber, and what closes the object after the body.
    Wrapped {
        head: String,
        body: Utf8Bytes,
        tail: &'static str,
    },
}

impl Frame {
    /// The bytes the frame will write (what the connection's byte budget counts).
    pub fn len(&self) -> usize {
        match self {
            Self::Own(text) => text.len(),
            Self::Shared(body) => body.len(),
            Self::Wrapped { head, body, tail } => head.len() + body.len() + tail.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text to write. A shared frame is written as is, without a copy.
    pub fn into_text(self) -> Utf8Bytes {
        match self {
            Self::Own(text) => text.into(),
            Self::Shared(body) => body,
            Self::Wrapped { head, body, tail } => {
                let mut text = String::with_capacity(head.len() + body.len() + tail.len());
                text.push_str(&head);
                text.push_str(&body);
                text.push_str(tail);
                text.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_frame_is_its_head_body_and_tail_and_counts_them_all() {
        let frame = Frame::Wrapped {
            head: r#"{"id":"a","data":"#.to_string(),
            body: Utf8Bytes::from("[1,2]"),
            tail: "}",
        };
        assert_eq!(frame.len(), r#"{"id":"a","data":[1,2]}"#.len());
        assert_eq!(frame.into_text().as_str(), r#"{"id":"a","data":[1,2]}"#);
    }

    #[test]
    fn a_shared_frame_is_written_from_the_shared_bytes() {
        let body = Utf8Bytes::from(r#"{"type":"event"}"#.to_string());
        let text = Frame::Shared(body.clone()).into_text();
        assert_eq!(text.as_str().as_ptr(), body.as_str().as_ptr());
    }
}
