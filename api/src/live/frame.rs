//! Encoded messages waiting to be written, and the part of them many clients share.
//!
//! The heavy part of a message — an event, a read model's change, its snapshot — is the
//! same for every subscriber; only the subscription's `id` differs. So it is encoded once
//! (by the hub or the follower) into a reference-counted [`Utf8Bytes`], and a queued frame
//! holds a small head of its own plus that shared body: a thousand subscribers of one
//! board cost one copy of a delta, not a thousand. A short frame is joined into one text as
//! it is written; a long one is written as a fragmented message straight from its parts
//! ([`Frame::fragments`]).

use axum::body::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

    /// The text as one fragmented message (RFC 6455 §5.4): frames of at most `most` bytes
    /// each, sliced from the frame's own parts without a copy; the client receives one
    /// message. The cut may fall inside a character: only the whole message must be UTF-8.
    pub fn fragments(self, most: usize) -> Vec<WireFrame> {
        let most = most.max(1);
        let parts = match self {
            Self::Own(text) => [Bytes::from(text), Bytes::new(), Bytes::new()],
            Self::Shared(body) => [Bytes::from(body), Bytes::new(), Bytes::new()],
            Self::Wrapped { head, body, tail } => [
                Bytes::from(head),
                Bytes::from(body),
                Bytes::from_static(tail.as_bytes()),
            ],
        };
        let mut pieces = Vec::new();
        for mut part in parts {
            while !part.is_empty() {
                pieces.push(part.split_to(part.len().min(most)));
            }
        }
        if pieces.is_empty() {
            pieces.push(Bytes::new());
        }
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(n, piece)| {
                let opcode = if n == 0 { Data::Text } else { Data::Continue };
                WireFrame::message(piece, OpCode::Data(opcode), n == last)
            })
            .collect()
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
    fn a_long_frame_is_one_message_of_fragments_no_longer_than_asked() {
        let body = "é".repeat(4000);
        let frame = Frame::Wrapped {
            head: r#"{"data":""#.to_string(),
            body: Utf8Bytes::from(body.clone()),
            tail: r#""}"#,
        };
        let fragments = frame.fragments(1000);
        assert!(fragments.iter().all(|f| f.payload().len() <= 1000));
        assert_eq!(fragments[0].header().opcode, OpCode::Data(Data::Text));
        assert!(fragments[1..]
            .iter()
            .all(|f| f.header().opcode == OpCode::Data(Data::Continue)));
        let (last, rest) = fragments.split_last().expect("fragments");
        assert!(last.header().is_final && rest.iter().all(|f| !f.header().is_final));
        let joined: Vec<u8> = fragments
            .iter()
            .flat_map(|f| f.payload().to_vec())
            .collect();
        assert_eq!(joined, format!(r#"{{"data":"{body}"}}"#).into_bytes());
    }

    #[test]
    fn a_shared_frame_is_fragmented_from_the_shared_bytes() {
        let body = Utf8Bytes::from("x".repeat(10));
        let fragments = Frame::Shared(body.clone()).fragments(4);
        assert_eq!(fragments.len(), 3);
        assert_eq!(fragments[0].payload().as_ptr(), body.as_str().as_ptr());
    }

    #[test]
    fn an_empty_frame_is_one_final_fragment() {
        let fragments = Frame::Own(String::new()).fragments(4);
        assert_eq!(fragments.len(), 1);
        assert!(fragments[0].header().is_final);
    }

    #[test]
    fn a_shared_frame_is_written_from_the_shared_bytes() {
        let body = Utf8Bytes::from(r#"{"type":"event"}"#.to_string());
        let text = Frame::Shared(body.clone()).into_text();
        assert_eq!(text.as_str().as_ptr(), body.as_str().as_ptr());
    }
}
