//! An implementation of `Broker` for Redis.
//!
//! Wire-compatible with kombu's Redis transport (`kombu/transport/redis.py`), so Python
//! Celery clients and workers can share queues with celeriac (spec §3).
//!
//! # Features
//!
//! * Type: virtual (kombu's emulated AMQP on lists)
//! * Supports direct: yes (default exchange `""`, and named exchanges through
//!   `_kombu.binding.<exchange>`)
//! * Supports topic: no (not yet)
//! * Supports fanout: yes, PUB/SUB on `/<db>.<exchange>[/<routing key>]` (`redis/fanout.rs`):
//!   events and remote control
//! * Supports priority: yes, 0 is the **highest** (`[0, 3, 6, 9]` sub-lists)
//! * Supports TTL: no
//! * Ack emulation: yes (`unacked` hash + `unacked_index` zset, restored after the
//!   visibility timeout by [`RedisBroker::restore_visible`]). A message held for its ETA or
//!   running with a late ack has its `unacked_index` score refreshed, so no sweep (ours or
//!   a Python worker's) restores it while it is in hand: kombu's documented ETA caveat.
//!   A fetch whose reply is lost leaves its messages unacked but delivered to nobody; they
//!   go back to their queues as soon as Redis answers again, not an hour later
//!   (`redis/journal.rs`).
//!
//! # Connection string
//!
//! `redis://[:password@]host:port/db`, or `rediss://` for TLS with Celery's `ssl_cert_reqs`,
//! `ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` query options ([`crate::redis_url`]).
//!
//! # Options ([`RedisOptions`], kombu's transport options)
//!
//! * `visibility_timeout`: 3600 s
//! * `unacked_mutex_expire`: 300 s
//! * `priority_steps`: `[0, 3, 6, 9]`
//! * `sep`: `"\x06\x16"`
//! * `global_keyprefix`: `""`
//! * `polling_interval` (the BRPOP timeout): 1 s
//! * Keys: `unacked`, `unacked_index`, `unacked_mutex` (after `global_keyprefix`).
//!
//! Requeue and restore move a message with one Lua script that removes the `unacked`
//! entry only if it still holds the value read just before, then pushes the message: the
//! same compare-and-move as kombu's `WATCH unacked; MULTI …; EXEC`, which cannot run on a
//! shared, multiplexed connection.

mod acks;
mod envelope;
mod fanout;
mod journal;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use serde_json::{Map, Value};

use self::acks::AckBatcher;
use self::envelope::{build_envelope, parse_envelope};
use self::journal::{FetchJournal, JOURNAL_TTL};
use crate::redis_url;
use crate::url::redact_password;

use super::{
    BroadcastExchange, BroadcastQueue, Broker, BrokerError, Capabilities, Delivery, Outgoing,
    PriorityOrder, Subscription,
};

const TRANSPORT: &str = "redis";

/// Moves a message from `unacked` back onto its queue(s) if the entry is unchanged.
/// KEYS: unacked, unacked_index, target lists...; ARGV: tag, expected value, LPUSH|RPUSH,
/// payload. Returns 1 if moved, 0 if someone else acked or restored it first.
const MOVE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 3, #KEYS do redis.call(ARGV[3], KEYS[i], ARGV[4]) end
return 1
";

/// Pops up to ARGV[1] messages from the lists KEYS[5..], first list first (the BRPOP key
/// order), recording each in `unacked` (KEYS[1]) and `unacked_index` (KEYS[2], score
/// ARGV[2]) in the same atomic step, so a message is never popped but unrecorded (kombu's
/// BRPOP-then-pipeline has that window). The recorded tags also go to this fetch's journal
/// (KEYS[3], expiring after ARGV[3] s), and the previous journal (KEYS[4]) is deleted
/// ([`journal`]). Returns flat triples: list key, message, and 1 if recorded or 0 if it
/// had no delivery tag (malformed; the caller logs it).
///
/// kombu's envelope ends with its `properties` object (`json.dumps` keeps the order
/// `prepare_message` builds), and decoding only that costs Redis less than half of decoding the
/// whole message. The slice after the last `"properties": ` (which cannot occur inside a
/// JSON string) decodes as one value only when that key is the envelope's own last
/// member: after a nested one, the closing brackets of its containers are left over.
/// Any other envelope is decoded whole.
const FETCH_SCRIPT: &str = r#"
local function properties_of(message)
  local last, at = nil, 1
  while true do
    local found = string.find(message, '"properties": ', at, true)
    if not found then break end
    last, at = found, found + 1
  end
  if last then
    local ok, properties = pcall(cjson.decode, string.sub(message, last + 14, -2))
    if ok and type(properties) == 'table' then return properties end
  end
  local ok, envelope = pcall(cjson.decode, message)
  return ok and type(envelope) == 'table' and envelope.properties
end
redis.call('DEL', KEYS[4])
local out = {}
local left = tonumber(ARGV[1])
for i = 5, #KEYS do
  while left > 0 do
    local message = redis.call('RPOP', KEYS[i])
    if not message then break end
    left = left - 1
    local properties = properties_of(message)
    local tag = type(properties) == 'table' and properties.delivery_tag
    local recorded = 0
    if type(tag) == 'string' then
      local info = properties.delivery_info
      local exchange, routing_key = '', ''
      if type(info) == 'table' then
        if type(info.exchange) == 'string' then exchange = info.exchange end
        if type(info.routing_key) == 'string' then routing_key = info.routing_key end
      end
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag,
        '[' .. message .. ', ' .. cjson.encode(exchange) .. ', ' .. cjson.encode(routing_key) .. ']')
      redis.call('RPUSH', KEYS[3], tag)
      recorded = 1
    end
    out[#out + 1] = KEYS[i]
    out[#out + 1] = message
    out[#out + 1] = recorded
  end
  if left == 0 then break end
end
if #out > 0 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
return out
"#;

/// Visibility timeouts from this long up get `unacked_index` scores in whole seconds
/// ([`RedisBroker::index_score`]).
const WHOLE_SECOND_SCORES_FROM: Duration = Duration::from_secs(60);

/// Deletes the lock key only if it still holds our token (redis-py's lock release).
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Kombu's Redis transport options. [`RedisOptions::default`] is kombu's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisOptions {
    /// Unacked messages older than this are restored by [`RedisBroker::restore_visible`].
    /// Default 3600 s.
    pub visibility_timeout: Duration,
    /// How long the `unacked_mutex` lock lives if its holder dies. Default 300 s.
    pub unacked_mutex_expire: Duration,
    /// Priority bands; a priority goes to the largest step not above it. Default
    /// `[0, 3, 6, 9]`.
    pub priority_steps: Vec<u8>,
    /// Separates a queue name from its priority band. Default `"\x06\x16"`.
    pub sep: String,
    /// Prepended to every key. Default `""`.
    pub global_keyprefix: String,
    /// The BRPOP timeout: how long one [`Broker::fetch`] waits. Default 1 s.
    pub polling_interval: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            visibility_timeout: Duration::from_secs(3600),
            unacked_mutex_expire: Duration::from_secs(300),
            priority_steps: vec![0, 3, 6, 9],
            sep: "\x06\x16".to_owned(),
            global_keyprefix: String::new(),
            polling_interval: Duration::from_secs(1),
        }
    }
}

/// Kombu's Redis transport.
pub struct RedisBroker {
    /// The options, fixed at connect time.
    options: RedisOptions,
    /// Opens the dedicated BRPOP connection.
    client: Client,
    /// Every command but BRPOP; reconnects by itself.
    manager: ConnectionManager,
    /// The dedicated BRPOP connection, so a blocking pop never delays an ack. tokio `Mutex`:
    /// held across the BRPOP; `None` after a connection error, reopened on the next fetch.
    blocking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// [`MOVE_SCRIPT`].
    move_script: Script,
    /// [`UNLOCK_SCRIPT`].
    unlock_script: Script,
    /// [`FETCH_SCRIPT`].
    fetch_script: Script,
    /// Sends acks in groups.
    acks: AckBatcher,
    /// Which fetches' tags must go back because their reply was lost.
    journal: FetchJournal,
    /// The database number, which names the PUB/SUB channels ([`fanout`]).
    db: i64,
}

impl RedisBroker {
    /// Connects to `url` with kombu's default options.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, BrokerError> {
        let client = redis_url::client(url).map_err(|e| BrokerError::InvalidUrl {
            transport: TRANSPORT,
            url: redact_password(url),
            reason: e.to_string(),
        })?;
        let manager =
            client
                .get_connection_manager()
                .await
                .map_err(|source| BrokerError::Redis {
                    op: "connect",
                    key: redact_password(url),
                    source,
                })?;
        let prefix = &options.global_keyprefix;
        let acks = AckBatcher::start(
            manager.clone(),
            format!("{prefix}unacked_index"),
            format!("{prefix}unacked"),
        );
        let db = client.get_connection_info().redis_settings().db();
        Ok(RedisBroker {
            db,
            options,
            client,
            manager,
            blocking: tokio::sync::Mutex::new(None),
            move_script: Script::new(MOVE_SCRIPT),
            unlock_script: Script::new(UNLOCK_SCRIPT),
            fetch_script: Script::new(FETCH_SCRIPT),
            acks,
            journal: FetchJournal::default(),
        })
    }

    /// The options in use.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// `global_keyprefix` + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.options.global_keyprefix)
    }

    /// The list holding `queue`'s messages of `priority` (spec §3.4), prefix included.
    pub fn queue_key(&self, queue: &str, priority: u8) -> String {
        let step = priority_step(&self.options.priority_steps, priority);
        if step == 0 {
            self.key(queue)
        } else {
            self.key(&format!("{queue}{}{step}", self.options.sep))
        }
    }

    /// The `unacked_index` score of a message delivered (or refreshed) now: the Unix time
    /// in seconds, as kombu writes it, but rounded up to a whole second when the visibility
    /// timeout is [`WHOLE_SECOND_SCORES_FROM`] or longer (kombu's default is an hour). In the
    /// small sorted set `unacked_index` usually is (a listpack, up to 128 entries), Redis
    /// keeps a fractional score as text, parses it again for every entry each ZADD walks
    /// past and prints it back with `%.17g`: about a tenth of its CPU per task in a drain.
    /// A whole number is kept as an integer. Rounded up, a message is never restored early,
    /// and at most a second late.
    fn index_score(&self) -> f64 {
        let now = now_secs();
        if self.options.visibility_timeout >= WHOLE_SECOND_SCORES_FROM {
            now.ceil()
        } else {
            now
        }
    }

    /// Requeues every unacked message older than the visibility timeout at the front of its
    /// queue, marked redelivered, under the `unacked_mutex` lock (spec §3.6). Returns how
    /// many were restored; 0 without doing anything if another process holds the lock.
    pub async fn restore_visible(&self) -> Result<usize, BrokerError> {
        let mut con = self.manager.clone();
        let mutex = self.key("unacked_mutex");
        let token = uuid::Uuid::new_v4().to_string();
        let expire_ms = u64::try_from(self.options.unacked_mutex_expire.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let acquired: Option<String> = redis::cmd("SET")
            .arg(&mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(expire_ms)
            .query_async(&mut con)
            .await
            .map_err(redis_error("restore lock", &mutex))?;
        if acquired.is_none() {
            return Ok(0);
        }
        let restored = self.restore_expired(&mut con).await;
        let released: Result<i64, _> = self
            .unlock_script
            .key(&mutex)
            .arg(&token)
            .invoke_async(&mut con)
            .await;
        let restored = restored?;
        released.map_err(redis_error("restore unlock", &mutex))?;
        Ok(restored)
    }

    async fn restore_expired(&self, con: &mut ConnectionManager) -> Result<usize, BrokerError> {
        let index = self.key("unacked_index");
        let ceil = now_secs() - self.options.visibility_timeout.as_secs_f64();
        let expired: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
            .arg(&index)
            .arg(ceil)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(con)
            .await
            .map_err(redis_error("restore scan", &index))?;
        let mut restored = 0;
        for (tag, _) in expired {
            if self.move_back(&tag, Push::Front).await? {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Moves an unacked message back onto its queue(s), marked redelivered. False if it
    /// was no longer unacked.
    async fn move_back(&self, tag: &str, push: Push) -> Result<bool, BrokerError> {
        let mut con = self.manager.clone();
        let unacked = self.key("unacked");
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&unacked)
            .arg(tag)
            .query_async(&mut con)
            .await
            .map_err(redis_error("requeue read", tag))?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        let (payload, targets) = match self.requeue_payload(&stored).await {
            Ok(found) => found,
            Err(reason) => {
                // Unusable bookkeeping: drop it rather than retry it forever.
                tracing::warn!(delivery_tag = tag, %reason, "dropping malformed unacked entry");
                self.forget(tag).await?;
                return Ok(false);
            }
        };
        if targets.is_empty() {
            tracing::warn!(
                delivery_tag = tag,
                "requeue: no queue bound, message dropped"
            );
        }
        let mut invocation = self.move_script.prepare_invoke();
        invocation.key(&unacked).key(self.key("unacked_index"));
        for target in &targets {
            invocation.key(target);
        }
        invocation
            .arg(tag)
            .arg(&stored)
            .arg(push.command())
            .arg(&payload);
        let moved: i64 = invocation
            .invoke_async(&mut con)
            .await
            .map_err(redis_error("requeue", tag))?;
        Ok(moved == 1)
    }

    /// From a stored `[envelope, exchange, routing_key]`: the envelope marked redelivered,
    /// and the lists it goes back to.
    async fn requeue_payload(&self, stored: &str) -> Result<(String, Vec<String>), String> {
        let parsed: Value = serde_json::from_str(stored).map_err(|e| e.to_string())?;
        let Some([envelope, exchange, routing_key]) = parsed.as_array().map(Vec::as_slice) else {
            return Err("not a [envelope, exchange, routing_key] array".to_owned());
        };
        let (Some(exchange), Some(routing_key)) = (exchange.as_str(), routing_key.as_str()) else {
            return Err("exchange or routing key is not a string".to_owned());
        };
        let mut envelope = envelope.clone();
        let Some(fields) = envelope.as_object_mut() else {
            return Err("envelope is not an object".to_owned());
        };
        let priority = fields
            .get("properties")
            .and_then(|p| p.get("priority"))
            .and_then(Value::as_u64)
            .map_or(0, clamp_priority);
        set_flag(fields, &["headers"], "redelivered");
        set_flag(fields, &["properties", "delivery_info"], "redelivered");
        let queues = self
            .route(exchange, routing_key)
            .await
            .map_err(|e| e.to_string())?;
        let targets = queues
            .iter()
            .map(|queue| self.queue_key(queue, priority))
            .collect();
        Ok((envelope.to_string(), targets))
    }

    /// The queues a message to `exchange` with `routing_key` goes to (direct routing).
    async fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        let bindings = self.key(&format!("_kombu.binding.{exchange}"));
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&bindings)
            .query_async(&mut self.manager.clone())
            .await
            .map_err(redis_error("binding lookup", &bindings))?;
        let sep = self.options.sep.as_str();
        let mut queues = Vec::new();
        for member in &members {
            let mut parts = member.splitn(3, sep);
            if let (Some(key), Some(_pattern), Some(queue)) =
                (parts.next(), parts.next(), parts.next())
                && key == routing_key
                && !queues.iter().any(|q| q == queue)
            {
                queues.push(queue.to_owned());
            }
        }
        Ok(queues)
    }

    /// Removes a delivery's bookkeeping (ack, reject without requeue), grouped with the
    /// others waiting ([`acks`]).
    async fn forget(&self, tag: &str) -> Result<(), BrokerError> {
        self.acks.remove(tag).await.map_err(redis_error("ack", tag))
    }

    /// The BRPOP keys for `queues`: by priority step, then by queue (spec §3.4).
    fn brpop_keys(&self, queues: &[String]) -> Vec<String> {
        self.options
            .priority_steps
            .iter()
            .flat_map(|&step| queues.iter().map(move |q| self.queue_key(q, step)))
            .collect()
    }

    /// The queue a popped key belongs to: prefix and priority suffix removed.
    fn queue_of(&self, key: &str) -> String {
        let key = key
            .strip_prefix(&self.options.global_keyprefix)
            .unwrap_or(key);
        match key.rsplit_once(&self.options.sep) {
            Some((queue, _)) => queue.to_owned(),
            None => key.to_owned(),
        }
    }

    /// Up to `max` messages already waiting in `keys`, each recorded as unacked
    /// ([`FETCH_SCRIPT`]): `(list key, envelope text, recorded)`.
    async fn pop_waiting(
        &self,
        keys: &[String],
        max: usize,
    ) -> Result<Vec<(String, String, bool)>, BrokerError> {
        self.recover_lost_fetches().await?;
        let journal = FetchJournal::new_key(&self.options.global_keyprefix);
        // With no earlier journal to delete, the script deletes its own (still empty) one.
        let previous = self.journal.delivered().unwrap_or_else(|| journal.clone());
        let mut invocation = self.fetch_script.prepare_invoke();
        invocation
            .key(self.key("unacked"))
            .key(self.key("unacked_index"))
            .key(&journal)
            .key(previous);
        for key in keys {
            invocation.key(key);
        }
        invocation
            .arg(max)
            .arg(self.index_score())
            .arg(JOURNAL_TTL.as_secs());
        let reply: Result<Vec<redis::Value>, _> =
            invocation.invoke_async(&mut self.manager.clone()).await;
        self.journal.fetched(journal, reply.is_ok());
        let flat = reply.map_err(redis_error("fetch", &keys.join(",")))?;
        let mut popped = Vec::with_capacity(flat.len() / 3);
        let mut items = flat.into_iter();
        while let (Some(key), Some(text), Some(recorded)) =
            (items.next(), items.next(), items.next())
        {
            let (Some(key), Some(text)) = (bulk_text(key), bulk_text(text)) else {
                continue;
            };
            popped.push((key, text, matches!(recorded, redis::Value::Int(1))));
        }
        Ok(popped)
    }

    /// Moves the tags of every fetch whose reply was lost back to the front of their
    /// queues ([`journal`]).
    async fn recover_lost_fetches(&self) -> Result<(), BrokerError> {
        for journal in self.journal.lost() {
            let tags: Vec<String> = redis::cmd("LRANGE")
                .arg(&journal)
                .arg(0)
                .arg(-1)
                .query_async(&mut self.manager.clone())
                .await
                .map_err(redis_error("fetch journal read", &journal))?;
            let mut restored = 0;
            // Each goes to the front: the last fetched first, so the first is popped first.
            for tag in tags.iter().rev() {
                if self.move_back(tag, Push::Front).await? {
                    restored += 1;
                }
            }
            redis::cmd("DEL")
                .arg(&journal)
                .exec_async(&mut self.manager.clone())
                .await
                .map_err(redis_error("fetch journal delete", &journal))?;
            self.journal.recovered(&journal);
            if restored > 0 {
                tracing::warn!(
                    "Restored {restored} message(s) fetched while the connection to Redis was lost"
                );
            }
        }
        Ok(())
    }

    /// Records a message popped by BRPOP as unacked (kombu's delivery bookkeeping). False
    /// when it has no delivery tag to record it by.
    async fn record_unacked(&self, key: &str, text: &str) -> Result<bool, BrokerError> {
        let Ok(delivery) = parse_envelope(&self.queue_of(key), text) else {
            return Ok(false);
        };
        let info = &delivery.properties.delivery_info;
        let record = format!(
            "[{text}, {}, {}]",
            Value::from(info.exchange.as_str()),
            Value::from(info.routing_key.as_str())
        );
        let tag = delivery.delivery_tag();
        redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(self.key("unacked_index"))
            .arg(self.index_score())
            .arg(tag)
            .ignore()
            .cmd("HSET")
            .arg(self.key("unacked"))
            .arg(tag)
            .arg(&record)
            .ignore()
            .exec_async(&mut self.manager.clone())
            .await
            .map_err(redis_error("record unacked", tag))?;
        Ok(true)
    }

    async fn blocking_pop(&self, keys: &[String]) -> Result<Option<(String, String)>, BrokerError> {
        let mut slot = self.blocking.lock().await;
        let con = match slot.as_mut() {
            Some(con) => con,
            None => {
                // Longer than the BRPOP timeout, so the pop itself never times out client-side.
                let config = AsyncConnectionConfig::new().set_response_timeout(Some(
                    self.options.polling_interval + Duration::from_secs(10),
                ));
                let con = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(redis_error("connect", "BRPOP connection"))?;
                slot.insert(con)
            }
        };
        let popped = redis::cmd("BRPOP")
            .arg(keys)
            .arg(self.options.polling_interval.as_secs_f64().max(0.01))
            .query_async(con)
            .await
            .map_err(redis_error("BRPOP", &keys.join(",")));
        if matches!(&popped, Err(e) if e.is_connection()) {
            *slot = None;
        }
        popped
    }
}

impl Broker for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            transport: TRANSPORT,
            priority: PriorityOrder::LowerFirst,
            fanout: true,
            visibility_timeout: Some(self.options.visibility_timeout),
            delayed_delivery: false,
            unacked_limit: None,
        }
    }

    async fn fetch(&self, queues: &[String], max: usize) -> Result<Vec<Delivery>, BrokerError> {
        if queues.is_empty() {
            tokio::time::sleep(self.options.polling_interval).await;
            return Ok(Vec::new());
        }
        let keys = self.brpop_keys(queues);
        let mut popped = self.pop_waiting(&keys, max.max(1)).await?;
        if popped.is_empty() {
            // Nothing waiting: block for the next one, as kombu does.
            let Some((key, text)) = self.blocking_pop(&keys).await? else {
                return Ok(Vec::new());
            };
            let recorded = match self.record_unacked(&key, &text).await {
                Ok(recorded) => recorded,
                // Popped and in hand: run it rather than drop it. Only a crash before its
                // ack can lose it now, kombu's window for every message.
                Err(err) => {
                    tracing::warn!("{err}; running the message unrecorded");
                    true
                }
            };
            popped.push((key, text, recorded));
        }
        let mut deliveries = Vec::with_capacity(popped.len());
        for (key, text, recorded) in popped {
            match parse_envelope(&self.queue_of(&key), &text) {
                Ok(delivery) if recorded => deliveries.push(delivery),
                Ok(delivery) => tracing::error!(
                    "message on {key} dropped: delivery tag {} could not be recorded",
                    delivery.delivery_tag()
                ),
                Err(err) => {
                    tracing::error!("{err}; the message has been dropped");
                    if let BrokerError::MalformedEnvelope {
                        delivery_tag: Some(tag),
                        ..
                    } = &err
                        && recorded
                    {
                        self.forget(tag).await?;
                    }
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        self.forget(delivery_tag).await
    }

    async fn extend_visibility(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        // XX: only an entry still there; an acked or restored one stays gone.
        redis::cmd("ZADD")
            .arg(self.key("unacked_index"))
            .arg("XX")
            .arg(self.index_score())
            .arg(delivery_tag)
            .exec_async(&mut self.manager.clone())
            .await
            .map_err(redis_error("extend visibility", delivery_tag))
    }

    async fn reject(&self, delivery_tag: &str, requeue: bool) -> Result<(), BrokerError> {
        if requeue {
            self.move_back(delivery_tag, Push::Back).await.map(drop)
        } else {
            self.forget(delivery_tag).await
        }
    }

    async fn give_back(&self, delivery_tag: &str) -> Result<(), BrokerError> {
        self.move_back(delivery_tag, Push::Front).await.map(drop)
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let priority = message.priority.map_or(0, |p| p.min(9));
        let envelope = build_envelope(exchange, routing_key, message, priority, PERSISTENT);
        let queues = self.route(exchange, routing_key).await?;
        if queues.is_empty() {
            tracing::warn!(
                exchange,
                routing_key,
                "publish: no queue bound, message dropped"
            );
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for queue in &queues {
            pipe.cmd("LPUSH")
                .arg(self.queue_key(queue, priority))
                .arg(&envelope)
                .ignore();
        }
        pipe.exec_async(&mut self.manager.clone())
            .await
            .map_err(redis_error("publish", routing_key))
    }

    async fn publish_broadcast(
        &self,
        exchange: &BroadcastExchange,
        routing_key: &str,
        message: &Outgoing,
    ) -> Result<(), BrokerError> {
        let priority = message.priority.map_or(0, |p| p.min(9));
        let envelope = build_envelope(&exchange.name, routing_key, message, priority, TRANSIENT);
        let channel = fanout::publish_channel(
            &self.options.global_keyprefix,
            self.db,
            &exchange.name,
            routing_key,
        );
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&envelope)
            .exec_async(&mut self.manager.clone())
            .await
            .map_err(redis_error("PUBLISH", &channel))
    }

    async fn subscribe_broadcast(
        &self,
        queue: &BroadcastQueue,
    ) -> Result<Subscription, BrokerError> {
        let pattern = fanout::subscribe_pattern(
            &self.options.global_keyprefix,
            self.db,
            &queue.exchange.name,
            &queue.binding_key,
        );
        fanout::subscribe(&self.client, pattern, queue).await
    }
}

/// kombu's `delivery_mode` for task messages.
const PERSISTENT: u8 = 2;
/// kombu's `delivery_mode` for events and pidbox messages.
const TRANSIENT: u8 = 1;

/// Which end of a list a restored message goes to.
#[derive(Clone, Copy)]
enum Push {
    /// RPUSH: popped next (restore after the visibility timeout or at shutdown).
    Front,
    /// LPUSH: behind everything waiting (reject with requeue).
    Back,
}

impl Push {
    fn command(self) -> &'static str {
        match self {
            Push::Front => "RPUSH",
            Push::Back => "LPUSH",
        }
    }
}

/// A bulk string reply as text, without a copy when it is valid UTF-8 (invalid sequences
/// are replaced, so the envelope parser reports them); `None` for any other reply.
fn bulk_text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned()),
        ),
        _ => None,
    }
}

fn redis_error(op: &'static str, key: &str) -> impl FnOnce(RedisError) -> BrokerError {
    let key = key.to_owned();
    move |source| BrokerError::Redis { op, key, source }
}

/// The largest step not above `priority` (clamped to 0..=9).
fn priority_step(steps: &[u8], priority: u8) -> u8 {
    let priority = priority.min(9);
    steps
        .iter()
        .copied()
        .filter(|&s| s <= priority)
        .max()
        .unwrap_or(0)
}

fn clamp_priority(priority: u64) -> u8 {
    u8::try_from(priority.min(9)).unwrap_or(9)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sets `name: true` in the object at `path` inside `fields`, creating objects as needed.
fn set_flag(fields: &mut Map<String, Value>, path: &[&str], name: &str) {
    let mut current = fields;
    for step in path {
        let entry = current
            .entry(step.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = match entry {
            Value::Object(map) => map,
            _ => return,
        };
    }
    current.insert(name.to_owned(), Value::Bool(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn priority_maps_to_largest_step_not_above_it() {
        let steps = [0, 3, 6, 9];
        let got: Vec<u8> = (0..=12).map(|p| priority_step(&steps, p)).collect();
        assert_eq!(got, [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 9]);
    }

    #[test]
    fn set_flag_creates_missing_objects() {
        let mut m = Map::new();
        set_flag(&mut m, &["properties", "delivery_info"], "redelivered");
        assert_eq!(
            Value::Object(m),
            json!({"properties": {"delivery_info": {"redelivered": true}}})
        );
    }
}
