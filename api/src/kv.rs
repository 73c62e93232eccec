//! The apiserver's only way to the data: an etcd v3 client.
//!
//! The same client talks to the local member in-process (the store's gRPC services served over
//! an in-memory duplex pipe, no socket) or to any etcd endpoints over the network, so the
//! apiserver behaves the same on Tugboat's store and on a real etcd.

use crate::error::ApiError;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tugboat_store::pb::etcdserverpb::{
    compare, kv_client::KvClient, request_op, response_op, watch_client::WatchClient,
    watch_request, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tugboat_store::pb::mvccpb::KeyValue;

/// Client TLS material for `--etcd-endpoints https://…`.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// PEM of the CA that signed the etcd server certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Failures talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A revision older than the compaction point.
    #[error("etcd: required revision has been compacted (compacted at {0})")]
    Compacted(i64),
    /// The endpoint could not be reached or has no leader.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The value is larger than etcd accepts.
    #[error("etcd: request is too large")]
    TooLarge,
    /// Anything else etcd answered.
    #[error("etcd: {0}")]
    Other(String),
    /// A bad endpoint URL or TLS setting.
    #[error("etcd endpoint {0}: {1}")]
    Config(String, String),
}

impl From<Status> for KvError {
    fn from(s: Status) -> Self {
        let msg = s.message().to_string();
        match s.code() {
            Code::OutOfRange if msg.contains("compacted") => KvError::Compacted(0),
            Code::InvalidArgument if msg.contains("too large") => KvError::TooLarge,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                KvError::Unavailable(msg)
            }
            _ => KvError::Other(msg),
        }
    }
}

impl From<KvError> for ApiError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Compacted(_) => {
                ApiError::Expired("The resourceVersion for the provided list is too old.".into())
            }
            KvError::TooLarge => ApiError::TooLarge("etcdserver: request is too large".into()),
            KvError::Unavailable(m) => ApiError::Unavailable(format!("storage unavailable: {m}")),
            KvError::Other(m) | KvError::Config(_, m) => ApiError::Internal(m),
        }
    }
}

/// Result of a compare-and-swap write.
#[derive(Debug)]
pub enum CasOutcome {
    /// Written at this revision.
    Written(i64),
    /// The compare failed; the current value (if any) is returned.
    Failed(Option<KeyValue>),
}

/// An etcd v3 client (cheap to clone).
#[derive(Clone)]
pub struct Kv {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
}

/// The smallest key greater than every key with this prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Kv {
    fn from_channel(ch: Channel) -> Self {
        let limit = 64 * 1024 * 1024;
        Kv {
            kv: KvClient::new(ch.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            watch: WatchClient::new(ch)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        }
    }

    /// A client over gRPC to etcd endpoints (`http://` or `https://`), balanced across them.
    pub fn connect(endpoints: &[String], tls: &EtcdTls) -> Result<Kv, KvError> {
        let mut eps = Vec::new();
        for url in endpoints {
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| KvError::Config(url.clone(), e.to_string()))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
            if url.starts_with("https://") {
                let mut cfg = ClientTlsConfig::new();
                if let Some(ca) = &tls.ca_pem {
                    cfg = cfg.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &tls.identity {
                    cfg = cfg.identity(Identity::from_pem(cert, key));
                }
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| KvError::Config(url.clone(), e.to_string()))?;
            }
            eps.push(ep);
        }
        if eps.is_empty() {
            return Err(KvError::Config(String::new(), "no endpoints".into()));
        }
        Ok(Kv::from_channel(Channel::balance_list(eps.into_iter())))
    }

    /// A client of services running in this process (the local member's etcd façade), over
    /// in-memory pipes.
    pub fn in_process(routes: tonic::service::Routes) -> Kv {
        let (tx, rx) = mpsc::unbounded_channel::<tokio::io::DuplexStream>();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                .map(Ok::<_, std::io::Error>);
            let res = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "in-process etcd server ended");
            }
        });
        // The URI is never dialled: the connector hands out one end of a fresh pipe.
        let ep = Endpoint::from_static("http://in-process.local");
        let ch = ep.connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(1 << 20);
                tx.send(server)
                    .map_err(|_| std::io::Error::other("in-process etcd server stopped"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }));
        Kv::from_channel(ch)
    }

    /// One key (linearizable read).
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), KvError> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        Ok((resp.kvs.into_iter().next(), rev))
    }

    /// Keys in `[start, end)`, at most `limit` (0 = all), at `revision` (0 = latest).
    /// Returns the keys, whether more follow, and the revision read.
    pub async fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<KeyValue>, bool, i64), KvError> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: start.to_vec(),
                range_end: end.to_vec(),
                limit,
                revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        Ok((resp.kvs, resp.more, rev))
    }

    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<i64, KvError> {
        let resp = self
            .kv
            .clone()
            .range(RangeRequest {
                key: b"/registry/.revision-probe".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(resp.header.map(|h| h.revision).unwrap_or(0))
    }

    async fn cas(
        &self,
        key: &[u8],
        mod_revision: i64,
        op: request_op::Request,
    ) -> Result<CasOutcome, KvError> {
        let resp = self
            .kv
            .clone()
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(compare::TargetUnion::ModRevision(mod_revision)),
                }],
                success: vec![RequestOp { request: Some(op) }],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    })),
                }],
            })
            .await?
            .into_inner();
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        if resp.succeeded {
            return Ok(CasOutcome::Written(rev));
        }
        let current = resp.responses.into_iter().find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        Ok(CasOutcome::Failed(current))
    }

    /// Puts `value` if the key's mod revision is `mod_revision` (0 = the key must not exist).
    pub async fn put_if(
        &self,
        key: &[u8],
        value: Vec<u8>,
        mod_revision: i64,
    ) -> Result<CasOutcome, KvError> {
        self.cas(
            key,
            mod_revision,
            request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value,
                ..Default::default()
            }),
        )
        .await
    }

    /// Deletes the key if its mod revision is `mod_revision`.
    pub async fn delete_if(&self, key: &[u8], mod_revision: i64) -> Result<CasOutcome, KvError> {
        self.cas(
            key,
            mod_revision,
            request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }),
        )
        .await
    }

    /// Compacts history before `revision`.
    pub async fn compact(&self, revision: i64) -> Result<(), KvError> {
        self.kv
            .clone()
            .compact(CompactionRequest {
                revision,
                physical: false,
            })
            .await?;
        Ok(())
    }

    /// A watch of `[start, end)` from `start_revision` with previous values. The returned
    /// sender asks for progress notifications; the stream yields every response.
    pub async fn watch(
        &self,
        start: &[u8],
        end: &[u8],
        start_revision: i64,
    ) -> Result<(WatchHandle, tonic::Streaming<WatchResponse>), KvError> {
        let (tx, rx) = mpsc::channel::<WatchRequest>(8);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: start.to_vec(),
                    range_end: end.to_vec(),
                    start_revision,
                    prev_kv: true,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| KvError::Unavailable("watch request channel closed".into()))?;
        let stream = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((WatchHandle { tx }, stream))
    }
}

/// Keeps a watch stream's request side open; asks for progress.
pub struct WatchHandle {
    tx: mpsc::Sender<WatchRequest>,
}

impl WatchHandle {
    /// Asks etcd for a progress notification (the revision this stream delivered up to).
    pub fn request_progress(&self) {
        let _ = self.tx.try_send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                WatchProgressRequest {},
            )),
        });
    }
}
