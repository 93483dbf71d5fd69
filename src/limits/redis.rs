//! Counters in Redis, shared by every instance: one script call per request checks every cap
//! and, if all pass, counts the request and registers it as in flight.
//!
//! In-flight requests are members of a sorted set scored by their start time; a request's
//! member is removed when it ends (without delaying its response), and members older than the
//! request timeout are pruned, so a crashed instance cannot leak slots for long.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::{Admission, Dimension, Refusal, Usage, seconds_to_reset, window_start};
use crate::tenancy::catalog::Limits;

const ADMIT: &str = r#"
-- KEYS: minute, hour, day, in-flight set
-- ARGV: cap minute, hour, day, concurrent; ttl minute, hour, day; now (ms); member; stale (ms)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[8]) - tonumber(ARGV[10]))
local used = {
  tonumber(redis.call('GET', KEYS[1]) or '0'),
  tonumber(redis.call('GET', KEYS[2]) or '0'),
  tonumber(redis.call('GET', KEYS[3]) or '0'),
}
for i = 1, 3 do
  if used[i] >= tonumber(ARGV[i]) then return {i, used[1], used[2], used[3]} end
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[4]) then return {4, used[1], used[2], used[3]} end
for i = 1, 3 do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[4 + i])
end
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[9])
redis.call('PEXPIRE', KEYS[4], ARGV[10])
return {0, used[1] + 1, used[2] + 1, used[3] + 1}
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    /// In-flight members older than this are considered abandoned.
    stale_after: Duration,
}

/// Removes the request from the in-flight set when it ends. Made *before* the script runs:
/// a request cancelled (or timed out) while the script's reply is on its way may have been
/// added by it, and dropping the slot then removes it — the removal is sent on the same
/// connection after the script, so Redis runs it after the script. Without this, such a
/// member would hold a concurrency slot until it went stale.
struct Slot {
    conn: ConnectionManager,
    key: String,
    member: String,
}

impl Slot {
    /// The script refused the request, so it added nothing: nothing to remove.
    fn disarm(mut self) {
        self.key.clear();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.key.is_empty() {
            return;
        }
        let (mut conn, key, member) = (
            self.conn.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _: Result<(), _> = redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&member)
                    .query_async(&mut conn)
                    .await;
            });
        }
    }
}

impl RedisStore {
    pub fn new(url: &str, stale_after: Duration) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|_| anyhow::anyhow!("KATAVEN_REDIS_URL is not a valid Redis URL"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(ADMIT),
            stale_after,
        })
    }

    /// The shared connection; it reconnects by itself after failures. The first connection is
    /// made on first use, so an instance starts even while Redis is down.
    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
    }

    /// One `PING` (readiness).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    pub async fn admit(
        &self,
        account: &str,
        limits: &Limits,
        now: u64,
    ) -> redis::RedisResult<Result<Admission, Refusal>> {
        let mut conn = self.conn().await?;
        let key = |dim: Dimension| {
            format!(
                "kataven:rl:{{{account}}}:{}:{}",
                dim.name(),
                window_start(dim, now)
            )
        };
        let in_flight = format!("kataven:rl:{{{account}}}:inflight");
        let member = uuid::Uuid::now_v7().to_string();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(now * 1000);
        let slot = Slot {
            conn: conn.clone(),
            key: in_flight.clone(),
            member: member.clone(),
        };
        let reply: Vec<u64> = self
            .script
            .key(key(Dimension::Minute))
            .key(key(Dimension::Hour))
            .key(key(Dimension::Day))
            .key(&in_flight)
            .arg(limits.per_minute)
            .arg(limits.per_hour)
            .arg(limits.per_day)
            .arg(limits.concurrent)
            .arg(60 + 5)
            .arg(3600 + 5)
            .arg(86_400 + 5)
            .arg(now_ms)
            .arg(&member)
            .arg(self.stale_after.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        let [verdict, minute, hour, day] = reply[..] else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "admit script reply",
            )));
        };
        let dimension = match verdict {
            0 => {
                let usage = Usage { minute, hour, day };
                return Ok(Ok(Admission::new(
                    Some(usage),
                    *limits,
                    now,
                    Some(Box::new(slot)),
                )));
            }
            1 => Dimension::Minute,
            2 => Dimension::Hour,
            3 => Dimension::Day,
            _ => Dimension::Concurrent,
        };
        slot.disarm();
        Ok(Err(Refusal {
            dimension,
            cap: dimension.cap(limits),
            retry_after_secs: seconds_to_reset(dimension, now),
            limits: *limits,
            now,
        }))
    }
}
