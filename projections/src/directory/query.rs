//! Reading the directory: lists (cursor-paged, newest first) and full-text search (best
//! match first) on the `directory_entries` view.

use omoi_domain::kind::AggregateKind;
use omoi_domain::task::TaskStatus;
use omoi_store::log::Cursor;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::model::Entry;
use super::projector::{
    entry_from_row, open_statuses, open_task, task_text, DirectoryProjector, ENTRY_COLUMNS,
    OPEN_TASK_TRIGRAMS, SEARCH_DOCUMENT,
};
use crate::catalog::live_schema;
use crate::{ProjectionError, Projector};

/// Which entries of one kind to list; all given filters must match.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub kind: AggregateKind,
    /// `None` only for operators, who see every organization.
    pub organizations: Option<Vec<Uuid>>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    /// A ticket's spec, a task's ticket.
    pub parent_id: Option<Uuid>,
    pub status: Option<String>,
    pub agent_id: Option<Uuid>,
    /// Only entries created before this cursor (a previous page's `next_before`).
    pub before: Option<Cursor>,
    pub limit: i64,
}

/// A page of a list, newest first.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub entries: Vec<Entry>,
    /// Where the next (older) page starts; `None` on the last page.
    pub next_before: Option<Cursor>,
}

/// One page of entries of `filter.kind`, newest first.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<ListPage, ProjectionError> {
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "select {ENTRY_COLUMNS} from directory_entries where kind = "
    ));
    sql.push_bind(filter.kind.noun());
    if let Some(organizations) = &filter.organizations {
        sql.push(" and organization_id = any(")
            .push_bind(organizations.clone())
            .push(")");
    }
    for (column, value) in [
        ("organization_id", filter.organization_id),
        ("project_id", filter.project_id),
        ("parent_id", filter.parent_id),
        ("agent_id", filter.agent_id),
    ] {
        if let Some(value) = value {
            sql.push(format!(" and {column} = ")).push_bind(value);
        }
    }
    if let Some(status) = &filter.status {
        sql.push(" and status = ").push_bind(status.clone());
    }
    if let Some(before) = filter.before {
        sql.push(" and (created_transaction_id, created_position) < (")
            .push_bind(before.transaction_id)
            .push(", ")
            .push_bind(before.global_position)
            .push(")");
    }
    sql.push(" order by created_transaction_id desc, created_position desc limit ")
        .push_bind(filter.limit + 1);
    let rows = sql.build().fetch_all(pool).await?;
    let mut entries = rows
        .iter()
        .map(entry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_before = if entries.len() as i64 > filter.limit {
        entries.truncate(filter.limit as usize);
        entries.last().map(|last| Cursor {
            transaction_id: last.created_transaction_id,
            global_position: last.created_position,
        })
    } else {
        None
    };
    Ok(ListPage {
        entries,
        next_before,
    })
}

/// The most results one search returns.
pub const MAX_SEARCH_RESULTS: i64 = 50;

/// A search result: the entry and how well it matched (higher is better).
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub entry: Entry,
    pub rank: f32,
}

/// Specs, tickets and tasks whose title or description contain every word of `words`
/// (each as a prefix, so that a palette finds "authentication" while "auth" is typed),
/// best match first. `words` are plain alphanumeric words (see [`query_words`]).
pub async fn search(
    pool: &PgPool,
    words: &[String],
    organizations: Option<&[Uuid]>,
    project_id: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SearchHit>, ProjectionError> {
    let Some(query) = prefix_query(words) else {
        return Ok(Vec::new());
    };
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "select {ENTRY_COLUMNS}, ts_rank({SEARCH_DOCUMENT}, q) as rank
           from directory_entries, to_tsquery('english'::regconfig, "
    ));
    sql.push_bind(query).push(format!(
        ") q where kind in ('spec', 'ticket', 'task') and {SEARCH_DOCUMENT} @@ q"
    ));
    if let Some(organizations) = organizations {
        sql.push(" and organization_id = any(")
            .push_bind(organizations.to_vec())
            .push(")");
    }
    if let Some(project_id) = project_id {
        sql.push(" and project_id = ").push_bind(project_id);
    }
    sql.push(" order by rank desc, created_transaction_id desc, created_position desc limit ")
        .push_bind(limit.clamp(1, MAX_SEARCH_RESULTS));
    let rows = sql.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(SearchHit {
                entry: entry_from_row(row)?,
                rank: row.try_get("rank")?,
            })
        })
        .collect()
}

/// The words of a typed query: runs of letters and digits, at most 16 of at most 64
/// characters each. Punctuation separates words, so nothing typed reaches the
/// `tsquery` syntax.
pub fn query_words(typed: &str) -> Vec<String> {
    typed
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
        .take(16)
        .collect()
}

/// `word:* & word:*`: every word, each as a prefix.
fn prefix_query(words: &[String]) -> Option<String> {
    let parts: Vec<String> = words
        .iter()
        .filter(|w| !w.is_empty() && w.chars().all(char::is_alphanumeric))
        .map(|w| format!("{w}:*"))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" & "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_text_becomes_plain_prefix_words() {
        assert_eq!(query_words("Auth login"), vec!["auth", "login"]);
        assert_eq!(query_words("a&b|!c:*'d'"), vec!["a", "b", "c", "d"]);
        assert_eq!(query_words("  ,;  "), Vec::<String>::new());
        assert_eq!(query_words(&"x ".repeat(40)).len(), 16);
        assert_eq!(query_words(&"y".repeat(100))[0].len(), 64);
        assert_eq!(
            prefix_query(&query_words("auth: login")).as_deref(),
            Some("auth:* & login:*")
        );
        assert_eq!(prefix_query(&[]), None);
    }
}

/// Two open tasks of one project whose text is near-identical: `task_id` was created
/// after `duplicate_of`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuspectedDuplicate {
    pub task_id: Uuid,
    pub duplicate_of: Uuid,
    pub similarity: f64,
}

/// Where the Conductor's comparison has got to: the creation position of the last open
/// task it compared with the older ones.
pub type DuplicatesCursor = (i64, i64);

/// How many of the most similar older tasks a new task is named a duplicate of.
pub const CLOSEST_DUPLICATES: i64 = 3;

/// A batch of the Conductor's comparison: the pairs found and how far it got.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DuplicatesBatch {
    pub pairs: Vec<SuspectedDuplicate>,
    /// Where the next batch starts; the batch's own start when it found no newer task.
    pub next: DuplicatesCursor,
    /// Open tasks compared (fewer than asked: the comparison has caught up).
    pub compared: usize,
}

/// The open tasks created after `after`, at most `batch` of them in creation order, each
/// compared with the older open tasks of its project: the pairs whose titles and
/// descriptions are at least `threshold` similar (`pg_trgm`), the newer named as the
/// duplicate of the older — of its [`CLOSEST_DUPLICATES`] most similar older tasks. Each task is compared once, when it is new, so a pass costs
/// the tasks created since the last one (the trigram index narrows each one's
/// candidates), not the square of the open tasks.
pub async fn suspected_duplicates(
    pool: &PgPool,
    threshold: f64,
    after: DuplicatesCursor,
    batch: i64,
) -> Result<DuplicatesBatch, sqlx::Error> {
    merge_pending_trigrams(pool).await?;
    let mut tx = pool.begin().await?;
    // `%` (what the index serves) compares with this threshold.
    sqlx::query("select set_config('pg_trgm.similarity_threshold', $1, true)")
        .bind(threshold.to_string())
        .execute(&mut *tx)
        .await?;
    let newest: Vec<(Uuid, i64, i64)> = sqlx::query_as(&format!(
        "select id, created_transaction_id, created_position from directory_entries
          where kind = 'task' and status in ({})
            and (created_transaction_id, created_position) > ($1, $2)
          order by created_transaction_id, created_position
          limit $3",
        open_statuses()
    ))
    .bind(after.0)
    .bind(after.1)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let Some(&(_, transaction, position)) = newest.last() else {
        tx.commit().await?;
        return Ok(DuplicatesBatch {
            next: after,
            ..DuplicatesBatch::default()
        });
    };
    let ids: Vec<Uuid> = newest.iter().map(|(id, _, _)| *id).collect();
    // Spelled with `open_task`, the probe can only go through the trigram index or scan
    // every row, and the planner, pricing `%` as a cheap operator, may still take the scan
    // on a small or freshly grown table: scans are ruled out for this transaction.
    sqlx::query("select set_config('enable_seqscan', 'off', true)")
        .execute(&mut *tx)
        .await?;
    let (newer, older, open) = (task_text("newer"), task_text("older"), open_task("older"));
    // Each new task probes the trigram index for its candidates. `offset 0` keeps the
    // planner from pushing the project and age conditions into the probe, where it would
    // rather walk the project's index and compare every open task of the project: 9 ms a
    // task at 50,000 open tasks (`omoi-bench bench-monitoring`), against well under one
    // through the trigram index.
    // Only each task's closest few are named: a task like hundreds of others needs a
    // pointer to the nearest, not hundreds of flags.
    let sql = format!(
        "select newer_id, older_id, similarity from (
             select newer.id as newer_id, older.id as older_id, older.similarity,
                    row_number() over (partition by newer.id
                                       order by older.similarity desc,
                                                older.created_transaction_id,
                                                older.created_position) as closeness
               from directory_entries newer
               cross join lateral (
                   select id, project_id, created_transaction_id, created_position,
                          similarity({newer}, {older})::float8 as similarity
                     from directory_entries older
                    where {open} and {older} % {newer}
                   offset 0) older
              where newer.id = any($2)
                and older.project_id = newer.project_id
                and (older.created_transaction_id, older.created_position)
                    < (newer.created_transaction_id, newer.created_position)
                and older.similarity >= $1) closest
          where closeness <= $3
          order by 3 desc, 1, 2"
    );
    let rows: Vec<(Uuid, Uuid, f64)> = sqlx::query_as(&sql)
        .bind(threshold)
        .bind(&ids)
        .bind(CLOSEST_DUPLICATES)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(DuplicatesBatch {
        pairs: rows
            .into_iter()
            .map(|(task_id, duplicate_of, similarity)| SuspectedDuplicate {
                task_id,
                duplicate_of,
                similarity,
            })
            .collect(),
        next: (transaction, position),
        compared: ids.len(),
    })
}

/// Moves the entries the trigram index took since the last pass from GIN's pending list
/// (where rows written one by one go, cheaply) into its tree, in one bulk merge. Left
/// there, every probe would read the whole list, and the planner, pricing that, would not
/// use the index at all: it computed the similarity of every open task for each new one —
/// 24 ms a task among 3,500 with descriptions of a few hundred characters, against 0.7 ms
/// after the merge (README, Orchestrator). The index has no other reader.
async fn merge_pending_trigrams(pool: &PgPool) -> Result<(), sqlx::Error> {
    let Some(schema) = live_schema(pool, DirectoryProjector.name()).await? else {
        return Ok(());
    };
    // `to_regclass`: null (nothing merged) for a build made before the index existed.
    sqlx::query("select gin_clean_pending_list(to_regclass($1))")
        .bind(format!("{schema}.{OPEN_TASK_TRIGRAMS}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// How many tasks of `project_id` are in each status (statuses with none left out).
pub async fn task_status_counts(
    pool: &PgPool,
    project_id: Uuid,
) -> Result<Vec<(TaskStatus, usize)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select status, count(*) from directory_entries
          where project_id = $1 and kind = 'task' group by status",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(status, count)| {
            let status = TaskStatus::ALL.into_iter().find(|s| s.as_str() == status)?;
            Some((status, usize::try_from(count).unwrap_or(0)))
        })
        .collect())
}
