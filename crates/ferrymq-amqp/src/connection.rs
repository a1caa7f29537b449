//! One AMQP connection: handshake, frame dispatch to channels, heartbeats, blocking, and the
//! closing handshake.

use crate::channel::{Channel, ClientCaps, ConnCtx, ConnEvent};
use crate::codec::frame::{decode_frame, encode_heartbeat, FrameError, FRAME_MIN_SIZE};
use crate::codec::methods::*;
use crate::codec::{CodecError, Frame, Method, PROTOCOL_HEADER};
use crate::error::{code, AmqpError};
use crate::low_water::LowWater;
use crate::outbox::{Outbox, WriterEvent};
use crate::server::AmqpConfig;
use crate::tls::ClientCert;
use bytes::BytesMut;
use ferrymq_core::connections::ConnectionMeta;
use ferrymq_core::flow::ConnectionState;
use ferrymq_core::stats::ConnectionStats;
use ferrymq_core::{Broker, CoreError, FieldTable, FieldValue};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a peer has to answer our connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often channels look for deliveries held past their consumer timeout.
const CONSUMER_TIMEOUT_TICK: Duration = Duration::from_millis(500);
/// Size of the receive buffers of a connection that is streaming frames.
const READ_CHUNK: usize = 64 * 1024;

/// Waits for group commit to make progress; false when it never will (no data directory, or
/// the fsync thread is gone).
async fn wait_sync(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Whether frame `f` must wait: its channel holds replies until group commit and the method
/// could not queue its own behind them.
fn must_wait(f: &Frame, channels: &HashMap<u16, Channel>) -> bool {
    let Frame::Method { channel, method } = f else {
        return false;
    };
    // The method first: publishes (the hot path) can always queue behind, so most frames
    // need no channel lookup.
    !crate::channel::can_queue_behind_held(method)
        && channels
            .get(channel)
            .is_some_and(|c| c.holds_replies() && !c.awaiting_content())
}

/// Why the main loop ended.
enum End {
    /// The peer went away, or our close handshake completed.
    Done,
    /// The client sent connection.close: reply close-ok after cleaning up.
    ClientClosed,
    /// We must send connection.close and wait for close-ok.
    Close(AmqpError),
}

/// Serves one client connection until it ends; with `tls`, after a TLS handshake that
/// counts towards the handshake timeout.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let deadline = Instant::now() + cfg.handshake_timeout;
    match tls {
        // Plain TCP keeps tokio's lock-free owned halves.
        None => {
            let lw = cfg
                .receive_batching
                .then(|| LowWater::new(std::os::fd::AsRawFd::as_raw_fd(&stream)));
            let (rd, wr) = stream.into_split();
            serve_stream(
                rd,
                wr,
                None,
                lw,
                deadline,
                (peer, local, false),
                broker,
                cfg,
                shutdown,
            )
            .await;
        }
        Some(tls) => {
            let Some((stream, cert)) = crate::tls::accept(stream, tls, deadline, peer).await else {
                return;
            };
            // rustls reads whole records itself; the low-water mark is for plain sockets.
            let (rd, wr) = tokio::io::split(stream);
            serve_stream(
                rd,
                wr,
                cert,
                None,
                deadline,
                (peer, local, true),
                broker,
                cfg,
                shutdown,
            )
            .await;
        }
    }
}

/// Serves the AMQP connection on a stream's read and write halves.
#[allow(clippy::too_many_arguments)]
async fn serve_stream<R, W>(
    rd: R,
    wr: W,
    client_cert: Option<ClientCert>,
    low_water: Option<LowWater>,
    deadline: Instant,
    (peer, local, tls): (SocketAddr, Option<SocketAddr>, bool),
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let out = Arc::new(Outbox::new(cfg.frame_max));
    let (wev_tx, wev_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ConnectionStats::default());
    let writer = {
        let out = out.clone();
        let stats = stats.clone();
        tokio::spawn(async move { out.run_writer(wr, wev_tx, stats).await })
    };
    let mut conn = Connection {
        rd,
        // Small until the connection actually streams: idle connections stay cheap (10,000 of
        // them is an issue 3 target), busy ones move to READ_CHUNK buffers on their first refill.
        rbuf: BytesMut::with_capacity(4096),
        out: out.clone(),
        broker,
        cfg,
        peer,
        local,
        tls,
        client_properties: FieldTable::default(),
        mechanism: String::new(),
        stats,
        frame_max: FRAME_MIN_SIZE,
        channel_max: 0,
        heartbeat: 0,
        user: String::new(),
        caps: ClientCaps::default(),
        client_cert,
        low_water,
        wev_rx,
        shutdown,
    };
    // Until connection.tune-ok only the AMQP minimum frame size is accepted (as RabbitMQ):
    // a peer that has not authenticated cannot make the broker buffer large frames.
    match conn.handshake(deadline).await {
        Ok(Some((ctx, ev_rx))) => conn.run(ctx, ev_rx).await,
        Ok(None) => {}
        Err(e) => conn.close_with(e, &mut HashMap::new(), None).await,
    }
    out.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

struct Connection<R> {
    rd: R,
    rbuf: BytesMut,
    out: Arc<Outbox>,
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    peer: SocketAddr,
    /// The address the client connected to (management API).
    local: Option<SocketAddr>,
    /// Whether the connection came over the AMQPS listener.
    tls: bool,
    /// What the client said about itself at start-ok (management API).
    client_properties: FieldTable,
    /// The SASL mechanism it logged in with.
    mechanism: String,
    /// Counters the management API reads (bytes here, messages in the channels).
    stats: Arc<ConnectionStats>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    user: String,
    caps: ClientCaps,
    /// The verified TLS client certificate, if any: what EXTERNAL logs in with.
    client_cert: Option<ClientCert>,
    /// The receive low-water mark of a plain TCP socket (ADR 0013); None over TLS.
    low_water: Option<LowWater>,
    wev_rx: mpsc::UnboundedReceiver<WriterEvent>,
    shutdown: watch::Receiver<bool>,
}

fn codec_error(e: FrameError) -> AmqpError {
    match e.error {
        CodecError::FrameTooLarge { .. }
        | CodecError::BadFrameEnd(_)
        | CodecError::UnknownFrameType(_)
        | CodecError::MalformedUtf8 => AmqpError::conn(code::FRAME_ERROR, e.error),
        CodecError::UnknownMethod(c, m) => AmqpError::conn(
            code::NOT_IMPLEMENTED,
            format!("unknown method class {c} method {m}"),
        ),
        CodecError::InsufficientBytes(_) | CodecError::Syntax(_) => AmqpError::conn(
            code::SYNTAX_ERROR,
            format!("malformed frame on channel {}: {}", e.channel, e.error),
        ),
    }
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Starts a fresh receive buffer when the current one is nearly full, carrying over the
    /// partial frame at its end. Deliberately not `BytesMut::reserve`: once every frame has been
    /// consumed, reserve grows the old buffer in place (doubling, and faulting in fresh pages)
    /// instead of reusing it, so the buffer would keep growing and each read would hand the
    /// connection task megabytes of frames to process without yielding, starving the writer
    /// tasks scheduled behind it.
    fn refill_read_buffer(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() >= 4096 {
            return;
        }
        let rest = self.rbuf.split();
        self.rbuf = BytesMut::with_capacity(READ_CHUNK.max(rest.len() + 4096));
        self.rbuf.extend_from_slice(&rest);
    }

    fn send(&self, channel: u16, m: impl Into<Method>) {
        let m = m.into();
        self.out.with(|o| o.method(channel, &m));
    }

    /// Reads one frame during the handshake, skipping heartbeats.
    async fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, AmqpError> {
        loop {
            match decode_frame(&mut self.rbuf, self.frame_max).map_err(codec_error)? {
                Some(Frame::Heartbeat { .. }) => continue,
                Some(f) => return Ok(Some(f)),
                None => {}
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.rbuf)).await {
                Err(_) => {
                    tracing::info!(peer = %self.peer, "handshake timed out");
                    return Ok(None);
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn expect_method(
        &mut self,
        deadline: Instant,
        want: &str,
    ) -> Result<Option<Method>, AmqpError> {
        match self.next_frame(deadline).await? {
            None => Ok(None),
            Some(Frame::Method { channel: 0, method }) => Ok(Some(method)),
            Some(_) => Err(AmqpError::conn(
                code::COMMAND_INVALID,
                format!("expected '{want}' on channel 0 during the connection handshake"),
            )),
        }
    }

    /// Protocol header, start/start-ok, tune/tune-ok, open/open-ok, all before `deadline`.
    async fn handshake(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<(ConnCtx, mpsc::UnboundedReceiver<ConnEvent>)>, AmqpError> {
        while self.rbuf.len() < 8 {
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Ok(None),
            }
        }
        if &self.rbuf[..8] != PROTOCOL_HEADER {
            tracing::info!(peer = %self.peer, "bad protocol header, answering with AMQP 0-9-1's");
            self.out
                .with(|o| o.buf().extend_from_slice(PROTOCOL_HEADER));
            return Ok(None);
        }
        let _ = self.rbuf.split_to(8);
        self.send(0, self.start_method());

        let Some(m) = self.expect_method(deadline, "connection.start-ok").await? else {
            return Ok(None);
        };
        let Method::ConnectionStartOk(so) = m else {
            return Err(AmqpError::conn(
                code::COMMAND_INVALID,
                format!("expected 'connection.start-ok', got '{}'", m.name()),
            ));
        };
        self.caps = read_caps(&so.client_properties);
        self.mechanism = so.mechanism.clone();
        // Bounded: before tune-ok frames are at most the AMQP minimum size.
        self.client_properties = so.client_properties;
        if so.mechanism == "EXTERNAL" {
            self.user = self.login_external()?;
        } else {
            self.login_password(&so.mechanism, &so.response.0)?;
        }

        self.send(
            0,
            ConnectionTune {
                channel_max: self.cfg.channel_max,
                frame_max: self.cfg.frame_max,
                heartbeat: self.cfg.heartbeat,
            },
        );
        let Some(m) = self.expect_method(deadline, "connection.tune-ok").await? else {
            return Ok(None);
        };
        let Method::ConnectionTuneOk(t) = m else {
            return Err(AmqpError::conn(
                code::COMMAND_INVALID,
                format!("expected 'connection.tune-ok', got '{}'", m.name()),
            ));
        };
        let fm = if t.frame_max == 0 {
            self.cfg.frame_max
        } else {
            t.frame_max
        };
        if fm < FRAME_MIN_SIZE {
            return Err(AmqpError::conn(
                code::NOT_ALLOWED,
                format!("frame_max={fm} < {FRAME_MIN_SIZE} min size"),
            ));
        }
        if fm > self.cfg.frame_max {
            return Err(AmqpError::conn(
                code::NOT_ALLOWED,
                format!("frame_max={fm} > {} max size", self.cfg.frame_max),
            ));
        }
        let cm = if t.channel_max == 0 {
            self.cfg.channel_max
        } else {
            t.channel_max
        };
        if cm > self.cfg.channel_max {
            return Err(AmqpError::conn(
                code::NOT_ALLOWED,
                format!(
                    "negotiated channel_max = {cm} is higher than the maximum allowed value ({})",
                    self.cfg.channel_max
                ),
            ));
        }
        self.frame_max = fm;
        self.out.frame_max.store(fm, Ordering::Relaxed);
        self.channel_max = cm;
        self.heartbeat = t.heartbeat;

        let Some(m) = self.expect_method(deadline, "connection.open").await? else {
            return Ok(None);
        };
        let Method::ConnectionOpen(o) = m else {
            return Err(AmqpError::conn(
                code::COMMAND_INVALID,
                format!("expected 'connection.open', got '{}'", m.name()),
            ));
        };
        let meta = ConnectionMeta {
            peer: Some(self.peer),
            protocol: "AMQP 0-9-1",
            local: self.local,
            tls: self.tls,
            client_properties: std::mem::take(&mut self.client_properties),
            auth_mechanism: std::mem::take(&mut self.mechanism),
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            heartbeat: self.heartbeat,
            stats: self.stats.clone(),
        };
        let session = self
            .broker
            .open_session(&self.user, &o.virtual_host, meta)
            .map_err(|e| match e {
                // Refusals at connection.open close the connection, as in RabbitMQ.
                CoreError::LimitReached(_) | CoreError::VHostAccessRefused(_) => {
                    AmqpError::conn(code::NOT_ALLOWED, e)
                }
                e => AmqpError::from_core(0, e),
            })
            .map_err(|e| e.caused_by((10, 40)))?;
        self.send(0, ConnectionOpenOk::default());
        tracing::debug!(peer = %self.peer, user = %self.user, vhost = %o.virtual_host, "connection opened");
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let ctx = ConnCtx {
            session,
            out: self.out.clone(),
            events: ev_tx,
            caps: self.caps,
            frame_max: self.frame_max,
            has_published: false,
            sync: self.broker.persistence().map(|p| p.sync().subscribe()),
            flow: Default::default(),
        };
        Ok(Some((ctx, ev_rx)))
    }

    /// PLAIN or AMQPLAIN: a user name and password in the start-ok response.
    fn login_password(&mut self, mechanism: &str, response: &[u8]) -> Result<(), AmqpError> {
        let (user, pass) = match mechanism {
            "PLAIN" => parse_plain(response),
            "AMQPLAIN" => parse_amqplain(response),
            other => {
                return Err(AmqpError::conn(
                    code::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{other}'"),
                ))
            }
        }
        .ok_or_else(|| {
            AmqpError::conn(
                code::ACCESS_REFUSED,
                format!("malformed {mechanism} response"),
            )
        })?;
        if let Err(e) =
            self.broker
                .authenticate_with(&user, &pass, mechanism, self.peer.ip().is_loopback())
        {
            // Debug formatting escapes control characters a peer may put in its user name.
            tracing::warn!(peer = %self.peer, user = ?user, "login refused: {e}");
            return Err(AmqpError::conn(code::ACCESS_REFUSED, e));
        }
        self.user = user;
        Ok(())
    }

    /// EXTERNAL (RabbitMQ's rabbitmq_auth_mechanism_ssl): the user is the subject CN of the
    /// verified client certificate; the user must exist, no password is checked. The
    /// response (an optional authorisation identity) is ignored, as RabbitMQ does.
    fn login_external(&self) -> Result<String, AmqpError> {
        let Some(cert) = &self.client_cert else {
            // Only offered with a verified client certificate (RabbitMQ's wording for a
            // mechanism it knows but did not offer).
            return Err(AmqpError::conn(
                code::COMMAND_INVALID,
                "invalid authentication mechanism 'EXTERNAL'",
            ));
        };
        let loopback = self.peer.ip().is_loopback();
        let result = match &cert.common_name {
            Some(user) => self
                .broker
                .authenticate_trusted(user, "EXTERNAL", loopback)
                .map(|()| user.clone()),
            None => Err(ferrymq_core::broker::login_refused("EXTERNAL")),
        };
        result.map_err(|e| {
            // Debug formatting escapes control characters a certificate may carry.
            tracing::warn!(peer = %self.peer, user = ?cert.common_name, "EXTERNAL login refused: {e}");
            AmqpError::conn(code::ACCESS_REFUSED, e)
        })
    }

    fn start_method(&self) -> ConnectionStart {
        let b = |v: bool| FieldValue::Bool(v);
        let caps = FieldTable(vec![
            ("publisher_confirms".into(), b(true)),
            ("exchange_exchange_bindings".into(), b(true)),
            ("basic.nack".into(), b(true)),
            ("consumer_cancel_notify".into(), b(true)),
            ("connection.blocked".into(), b(true)),
            ("consumer_priorities".into(), b(true)),
            ("authentication_failure_close".into(), b(true)),
            ("per_consumer_qos".into(), b(true)),
            ("direct_reply_to".into(), b(true)),
        ]);
        let s = FieldValue::string;
        ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable(vec![
                ("capabilities".into(), FieldValue::Table(caps)),
                ("cluster_name".into(), s("ferrymq")),
                ("copyright".into(), s("FerryMQ contributors")),
                (
                    "information".into(),
                    s("Licensed under the Apache License 2.0"),
                ),
                ("platform".into(), s("Rust")),
                ("product".into(), s("FerryMQ")),
                ("version".into(), s(env!("CARGO_PKG_VERSION"))),
            ]),
            mechanisms: match self.client_cert {
                Some(_) => "PLAIN AMQPLAIN EXTERNAL".into(),
                None => "PLAIN AMQPLAIN".into(),
            },
            locales: "en_US".into(),
        }
    }

    /// The main loop after the handshake.
    async fn run(&mut self, mut ctx: ConnCtx, mut ev_rx: mpsc::UnboundedReceiver<ConnEvent>) {
        let mut channels: HashMap<u16, Channel> = HashMap::new();
        let end = self.main_loop(&mut ctx, &mut channels, &mut ev_rx).await;
        // What follows waits for single small frames (close-ok) or the peer's FIN.
        if let Some(lw) = self.low_water.as_mut() {
            lw.lower();
        }
        let client_closed = matches!(end, End::ClientClosed);
        if let End::Close(e) = end {
            self.close_with(e, &mut channels, Some(&ctx)).await;
        }
        for (_, mut ch) in channels.drain() {
            ch.cleanup(&ctx);
        }
        ctx.session.close();
        if client_closed {
            // Cleanup is done before close-ok so a client that reconnects sees its exclusive
            // queues gone. Then let the client close the socket first: some clients (lapin)
            // report an error if our FIN arrives together with close-ok.
            self.send(0, ConnectionCloseOk {});
            let linger = async {
                let mut scratch = [0u8; 1024];
                while matches!(self.rd.read(&mut scratch).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
        }
    }

    async fn main_loop(
        &mut self,
        ctx: &mut ConnCtx,
        channels: &mut HashMap<u16, Channel>,
        ev_rx: &mut mpsc::UnboundedReceiver<ConnEvent>,
    ) -> End {
        let hb = Duration::from_secs(self.heartbeat.into());
        let mut tick = tokio::time::interval(if self.heartbeat > 0 {
            hb / 2
        } else {
            Duration::from_secs(3600)
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_recv = Instant::now();
        let mut last_writes = self.out.writes();
        let mut blocked_rx = self.broker.blocked();
        let mut blocked = blocked_rx.borrow_and_update().clone();
        let mut blocked_sent = false;
        let mut held = false;
        let mut shown_state = ConnectionState::Running;
        let mut stalled_since: Option<Instant> = None;
        let mut sync_rx = ctx.sync.clone();
        let mut closed_rx = ctx.session.closed();
        // Consumer timeouts are checked on this tick (see `Channel::check_consumer_timeout`).
        let mut ack_tick = tokio::time::interval(CONSUMER_TIMEOUT_TICK);
        ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A frame that must wait until its channel's held replies are out.
        let mut waiting: Option<Frame> = None;
        // When a raised receive low-water mark must come down (watched only while raised).
        let mut low_water_due = Box::pin(tokio::time::sleep_until(Instant::now()));
        loop {
            // Process every complete frame already buffered.
            loop {
                // A client that pipelines requests (basic.get, mandatory publishes that come
                // back, declares) faster than it reads the answers is paused here, not
                // buffered for: its frames wait in the socket until the writer drains.
                if blocked.is_some() && ctx.has_published
                    || self.out.congested()
                    || (ctx.flow.over_credit() && ctx.flow.throttled(ctx.synced()))
                {
                    break;
                }
                let f = match waiting.take() {
                    Some(f) => f,
                    None => match decode_frame(&mut self.rbuf, self.frame_max) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return End::Close(codec_error(e)),
                    },
                };
                if must_wait(&f, channels) {
                    waiting = Some(f);
                    break;
                }
                match self.handle_frame(ctx, channels, f) {
                    Ok(true) => {}
                    Ok(false) => return End::ClientClosed,
                    Err(e @ AmqpError::Connection { .. }) => return End::Close(e),
                    Err(e @ AmqpError::Channel { .. }) => self.close_channel(ctx, channels, e),
                    Err(AmqpError::Io(_)) => return End::Done,
                }
            }
            if let Some(end) = self.flush_confirms(ctx, channels) {
                return end;
            }
            // As RabbitMQ: only connections that publish are held (and told so); consumers
            // keep draining during an alarm.
            let alarm_hold = blocked.is_some() && ctx.has_published;
            let flow_hold = ctx.flow.over_credit() && ctx.flow.throttled(ctx.synced());
            let hold_reads = alarm_hold || flow_hold || self.out.congested() || waiting.is_some();
            let state = match (alarm_hold, flow_hold) {
                (true, _) => ConnectionState::Blocked,
                (false, true) => ConnectionState::Flow,
                _ => ConnectionState::Running,
            };
            if state != shown_state {
                ctx.session.info().set_state(state);
                shown_state = state;
            }
            if hold_reads && !held {
                held = true;
                // Not reading is our choice now: a deadline must not take it for a peer
                // that waits for an answer (ADR 0013).
                if let Some(lw) = self.low_water.as_mut() {
                    lw.lower();
                }
            } else if !hold_reads && held {
                // The peer's silence while held was our doing: restart the clock.
                held = false;
                last_recv = Instant::now();
            }
            if ctx.caps.connection_blocked && alarm_hold != blocked_sent {
                if alarm_hold {
                    self.send(
                        0,
                        ConnectionBlocked {
                            reason: blocked.clone().unwrap_or_default(),
                        },
                    );
                } else {
                    self.send(0, ConnectionUnblocked {});
                }
                blocked_sent = alarm_hold;
            }
            let awaiting_sync = flow_hold || channels.values().any(Channel::awaits_sync);
            tokio::select! {
                changed = wait_sync(&mut sync_rx), if awaiting_sync => {
                    if changed {
                        if let Some(end) = self.flush_confirms(ctx, channels) {
                            return end;
                        }
                    } else {
                        sync_rx = None;
                    }
                }
                r = self.rd.read_buf(&mut self.rbuf), if !hold_reads => {
                    match r {
                        Ok(0) | Err(_) => return End::Done,
                        Ok(n) => {
                            last_recv = Instant::now();
                            ConnectionStats::bump(&self.stats.recv_oct, n as u64);
                            ConnectionStats::bump(&self.stats.recv_cnt, 1);
                            let writes = self.out.writes();
                            if let Some(due) = self.low_water.as_mut().and_then(|l| l.after_read(n, last_recv, writes)) {
                                low_water_due.as_mut().reset(due);
                            }
                        }
                    }
                    self.refill_read_buffer();
                }
                () = &mut low_water_due, if self.low_water.as_ref().is_some_and(LowWater::raised) => {
                    if let Some(next) = self.low_water.as_mut().and_then(|l| l.on_deadline(Instant::now())) {
                        low_water_due.as_mut().reset(next);
                    }
                }
                Some(ev) = ev_rx.recv() => match ev {
                    ConnEvent::ServerCancel { channel, tag } => {
                        if let Some(ch) = channels.get_mut(&channel) {
                            ch.server_cancelled(ctx, &tag);
                        }
                    }
                },
                Some(ev) = self.wev_rx.recv() => match ev {
                    WriterEvent::Drained => {
                        for ch in channels.values() {
                            ch.kick_consumers();
                        }
                    }
                    WriterEvent::Failed => return End::Done,
                },
                _ = self.shutdown.changed() => {
                    return End::Close(AmqpError::conn(
                        code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                r = closed_rx.changed() => {
                    let reason = closed_rx.borrow_and_update().clone();
                    if let (Ok(()), Some(reason)) = (r, reason) {
                        return End::Close(AmqpError::conn(code::CONNECTION_FORCED, reason));
                    }
                }
                _ = ack_tick.tick() => {
                    let now = ferrymq_core::expiry::now_ms();
                    let mut expired = Vec::new();
                    for ch in channels.values_mut() {
                        if let Some(e) = ch.check_consumer_timeout(ctx, now) {
                            expired.push(e);
                        }
                    }
                    for e in expired {
                        self.close_channel(ctx, channels, e);
                    }
                }
                _ = blocked_rx.changed() => {
                    blocked = blocked_rx.borrow_and_update().clone();
                    // While held, the peer's silence is our doing: restart the clock.
                    last_recv = Instant::now();
                }
                _ = tick.tick(), if self.heartbeat > 0 => {
                    if !hold_reads && last_recv.elapsed() > hb * 2 {
                        tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat);
                        return End::Done;
                    }
                    let w = self.out.writes();
                    // Held because it does not read what it asked for: a client whose
                    // output has not moved for two heartbeat intervals is gone.
                    let output_held = hold_reads && !alarm_hold && !flow_hold;
                    stalled_since = match (output_held && w == last_writes, stalled_since) {
                        (false, _) => None,
                        (true, None) => Some(Instant::now()),
                        (true, s) => s,
                    };
                    if stalled_since.is_some_and(|t| t.elapsed() > hb * 2) {
                        tracing::warn!(peer = %self.peer, "client stopped reading its output, timeout: {}s", self.heartbeat);
                        return End::Done;
                    }
                    if w == last_writes {
                        self.out.with(|o| encode_heartbeat(o.buf()));
                    }
                    last_writes = self.out.writes();
                }
            }
        }
    }

    /// Sends every channel's confirms (and held replies) that group commit has made due; a
    /// failure that ends the connection is returned.
    fn flush_confirms(
        &mut self,
        ctx: &mut ConnCtx,
        channels: &mut HashMap<u16, Channel>,
    ) -> Option<End> {
        let failed: Vec<AmqpError> = channels
            .values_mut()
            .filter_map(|ch| ch.flush_confirms(ctx).err())
            .collect();
        for e in failed {
            match e {
                e @ AmqpError::Channel { .. } => self.close_channel(ctx, channels, e),
                AmqpError::Io(_) => return Some(End::Done),
                e => return Some(End::Close(e)),
            }
        }
        None
    }

    /// Closes one channel after a channel error: releases what it holds (its unacked
    /// messages return to their queues) and sends channel.close; frames the client sends
    /// before channel.close-ok are ignored.
    fn close_channel(
        &mut self,
        ctx: &mut ConnCtx,
        channels: &mut HashMap<u16, Channel>,
        e: AmqpError,
    ) {
        let AmqpError::Channel {
            channel,
            code,
            text,
            class_id,
            method_id,
        } = e
        else {
            return;
        };
        tracing::debug!(peer = %self.peer, channel, code, "channel error: {text}");
        if let Some(ch) = channels.get_mut(&channel) {
            ch.cleanup(ctx);
            ch.closing = true;
        }
        self.send(
            channel,
            ChannelClose {
                reply_code: code,
                reply_text: text,
                class_id,
                method_id,
            },
        );
    }

    /// Handles one frame; returns Ok(false) when the connection is finished.
    fn handle_frame(
        &mut self,
        ctx: &mut ConnCtx,
        channels: &mut HashMap<u16, Channel>,
        f: Frame,
    ) -> Result<bool, AmqpError> {
        match f {
            Frame::Heartbeat { channel: 0 } => Ok(true),
            Frame::Heartbeat { channel } => Err(AmqpError::conn(
                code::FRAME_ERROR,
                format!("heartbeat frame on channel {channel}, heartbeats must use channel 0"),
            )),
            Frame::Method { channel: 0, method } => match method {
                Method::ConnectionClose(c) => {
                    tracing::debug!(peer = %self.peer, code = c.reply_code, "client closed connection: {}", c.reply_text);
                    Ok(false)
                }
                Method::ConnectionCloseOk(_) => Err(AmqpError::conn(
                    code::COMMAND_INVALID,
                    "connection.close-ok received but the server did not close the connection",
                )),
                Method::ConnectionUpdateSecret(_) => {
                    self.send(0, ConnectionUpdateSecretOk {});
                    Ok(true)
                }
                // RabbitMQ's answer to a channel's method sent on channel 0.
                other => Err(AmqpError::conn(
                    code::CHANNEL_ERROR,
                    "unexpected method in connection state running",
                )
                .caused_by(other.ids())),
            },
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => Err(
                AmqpError::conn(code::UNEXPECTED_FRAME, "content frame on channel 0"),
            ),
            Frame::Method { channel, method } => {
                let Some(ch) = channels.get_mut(&channel) else {
                    if let Method::ChannelOpen(_) = method {
                        // channel_max limits how many channels are open, not their numbers
                        // (RabbitMQ 3.10 accepts any number up to 65535).
                        if channels.len() >= usize::from(self.channel_max) {
                            return Err(AmqpError::conn(
                                code::NOT_ALLOWED,
                                format!(
                                    "number of channels opened ({}) has reached the negotiated channel_max ({})",
                                    channels.len(),
                                    self.channel_max
                                ),
                            ));
                        }
                        let permit = ctx
                            .session
                            .open_channel(channel)
                            .map_err(|e| AmqpError::conn(code::NOT_ALLOWED, e))?;
                        channels.insert(channel, Channel::new(channel, ctx, permit));
                        self.send(channel, ChannelOpenOk::default());
                        return Ok(true);
                    }
                    return Err(AmqpError::conn(
                        code::CHANNEL_ERROR,
                        format!(
                            "expected 'channel.open' on channel {channel}, got '{}'",
                            method.name()
                        ),
                    )
                    .caused_by(method.ids()));
                };
                if ch.closing {
                    match method {
                        Method::ChannelCloseOk(_) => {
                            channels.remove(&channel);
                        }
                        Method::ChannelClose(_) => {
                            self.send(channel, ChannelCloseOk {});
                            channels.remove(&channel);
                        }
                        _ => {}
                    }
                    return Ok(true);
                }
                if ch.awaiting_content() {
                    return Err(AmqpError::conn(
                        code::UNEXPECTED_FRAME,
                        format!("expected content header for class 60, got method '{}' on channel {channel}", method.name()),
                    ));
                }
                match method {
                    Method::ChannelOpen(_) => Err(AmqpError::conn(
                        code::CHANNEL_ERROR,
                        format!("second 'channel.open' seen on channel {channel}"),
                    )),
                    Method::ChannelClose(_) => {
                        // The client leaves: nothing it could still be told matters.
                        let _ = ch.flush_confirms(ctx);
                        ch.cleanup(ctx);
                        channels.remove(&channel);
                        self.send(channel, ChannelCloseOk {});
                        Ok(true)
                    }
                    Method::ChannelCloseOk(_) => Ok(true),
                    m => ch.handle_method(ctx, m).map(|_| true),
                }
            }
            Frame::Header {
                channel,
                class_id,
                body_size,
                properties,
                summary,
            } => match channels.get_mut(&channel) {
                Some(ch) if ch.closing => Ok(true),
                Some(ch) => ch
                    .handle_header(ctx, class_id, body_size, properties, summary)
                    .map(|_| true),
                None => Err(AmqpError::conn(
                    code::CHANNEL_ERROR,
                    format!("content header on unopened channel {channel}"),
                )),
            },
            Frame::Body { channel, payload } => match channels.get_mut(&channel) {
                Some(ch) if ch.closing => Ok(true),
                Some(ch) => ch.handle_body(ctx, payload).map(|_| true),
                None => Err(AmqpError::conn(
                    code::CHANNEL_ERROR,
                    format!("content body on unopened channel {channel}"),
                )),
            },
        }
    }

    /// Sends connection.close for `e` and waits (briefly) for close-ok, discarding other frames.
    async fn close_with(
        &mut self,
        e: AmqpError,
        channels: &mut HashMap<u16, Channel>,
        ctx: Option<&ConnCtx>,
    ) {
        let AmqpError::Connection {
            code,
            text,
            class_id,
            method_id,
        } = e
        else {
            return;
        };
        if code == code::CONNECTION_FORCED {
            tracing::info!(peer = %self.peer, "closing connection: {text}");
        } else {
            tracing::warn!(peer = %self.peer, code, "closing connection: {text}");
        }
        if let Some(ctx) = ctx {
            for (_, mut ch) in channels.drain() {
                ch.cleanup(ctx);
            }
        }
        self.send(
            0,
            ConnectionClose {
                reply_code: code,
                reply_text: text,
                class_id,
                method_id,
            },
        );
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            loop {
                match decode_frame(&mut self.rbuf, self.frame_max) {
                    Ok(Some(Frame::Method {
                        channel: 0,
                        method: Method::ConnectionCloseOk(_),
                    })) => return,
                    Ok(Some(Frame::Method {
                        channel: 0,
                        method: Method::ConnectionClose(_),
                    })) => {
                        self.send(0, ConnectionCloseOk {});
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }
}

fn read_caps(props: &FieldTable) -> ClientCaps {
    let Some(FieldValue::Table(c)) = props.get("capabilities") else {
        return ClientCaps::default();
    };
    let flag = |k: &str| c.get(k).and_then(FieldValue::as_bool).unwrap_or(false);
    ClientCaps {
        consumer_cancel_notify: flag("consumer_cancel_notify"),
        connection_blocked: flag("connection.blocked"),
    }
}

/// SASL PLAIN: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(resp: &[u8]) -> Option<(String, String)> {
    let mut parts = resp.split(|b| *b == 0);
    let _authz = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    Some((
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(pass).into_owned(),
    ))
}

/// RabbitMQ's AMQPLAIN: a field table without its length prefix, with LOGIN and PASSWORD.
fn parse_amqplain(resp: &[u8]) -> Option<(String, String)> {
    let t = ferrymq_core::wire::read_table(resp).ok()?;
    let get = |k: &str| match t.get(k) {
        Some(FieldValue::LongStr(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}
