//! Rows in PostgreSQL's binary `COPY` format, for a fold that writes many rows at once:
//! the server takes them as they are (no arrays to build on the client and take apart on
//! the server, as `unnest` needs) — `COPY … FROM STDIN (FORMAT binary)`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::FOLD_WRITE_CHUNK;

/// The binary format's signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Rows of one table, encoded as they are added.
#[derive(Debug, Default)]
pub(crate) struct CopyRows {
    data: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    pub(crate) fn len(&self) -> usize {
        self.rows
    }

    /// Starts a row of `fields` fields; the caller then adds exactly that many.
    pub(crate) fn row(&mut self, fields: i16) -> &mut Self {
        if self.data.is_empty() {
            self.data.extend_from_slice(HEADER);
        }
        self.rows += 1;
        self.data.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn length(&mut self, bytes: usize) {
        // A field longer than 2 GiB cannot be a row of ours: PostgreSQL refuses the copy.
        let length = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.data.extend_from_slice(&length.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.length(bytes.len());
        self.data.extend_from_slice(bytes);
        self
    }

    fn null(&mut self) -> &mut Self {
        self.data.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub(crate) fn bigint(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub(crate) fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub(crate) fn optional_uuid(&mut self, value: Option<Uuid>) -> &mut Self {
        match value {
            Some(value) => self.uuid(value),
            None => self.null(),
        }
    }

    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub(crate) fn optional_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    /// A `jsonb` field: its format version (1), then the JSON text.
    pub(crate) fn jsonb(&mut self, json: &str) -> &mut Self {
        self.length(json.len() + 1);
        self.data.push(1);
        self.data.extend_from_slice(json.as_bytes());
        self
    }

    pub(crate) fn optional_timestamptz(&mut self, value: Option<DateTime<Utc>>) -> &mut Self {
        match value {
            Some(value) => self.timestamptz(value),
            None => self.null(),
        }
    }

    pub(crate) fn timestamptz(&mut self, value: DateTime<Utc>) -> &mut Self {
        self.bigint(value.timestamp_micros() - POSTGRES_EPOCH_MICROS)
    }

    /// Copies the rows into `table`'s `columns` (in the order the rows hold them) and
    /// empties this.
    pub(crate) async fn copy(
        &mut self,
        conn: &mut PgConnection,
        table: &str,
        columns: &str,
    ) -> Result<u64, sqlx::Error> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.data.extend_from_slice(&TRAILER);
        let data = std::mem::take(&mut self.data);
        self.rows = 0;
        let statement = format!("copy {table} ({columns}) from stdin (format binary)");
        let mut copy = conn.copy_in_raw(&statement).await?;
        copy.send(data).await?;
        copy.finish().await
    }

    /// [`Self::copy`] once [`FOLD_WRITE_CHUNK`] rows are held: a fold's write encodes and
    /// sends its rows a chunk at a time, so they never sit in memory twice.
    pub(crate) async fn copy_when_full(
        &mut self,
        conn: &mut PgConnection,
        table: &str,
        columns: &str,
    ) -> Result<(), sqlx::Error> {
        if self.rows >= FOLD_WRITE_CHUNK {
            self.copy(conn, table, columns).await?;
        }
        Ok(())
    }
}
