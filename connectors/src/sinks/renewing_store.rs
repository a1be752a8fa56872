//! An object store whose client trusts a `tls.ca` file that may be renewed while sluice runs (a
//! MinIO or Ceph gateway moved to a new private CA, the bundle rewritten by cert-manager or a
//! mounted secret): [`RenewingStore`] stands for the store built from the URL and its options, and
//! builds it again with the file's new certificates once they change, as the connectors that send
//! requests do with their `tls` files ([`crate::tls::TlsClient`]).
//!
//! Guarantees: the file is looked at at most every 5 s, when a request asks for the store
//! ([`Renewing`]); a change is read once it has settled (unchanged at the next look, or written
//! 2 s before or longer) and taken only when it holds certificates the store's client can use;
//! until then, and when it cannot be used (said and counted once per change of the file,
//! `TlsRenewalFailures` once the sink hands over its counters), requests use the
//! store built before. A request, a listing or an upload in parts already begun keeps the client it
//! began with; the next part of an upload goes through the store of its time, under the same upload
//! id (the id is the server's, not the client's). Every call is forwarded unchanged, so the store
//! answers, and fails, as the one it stands for.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Certificate, CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::tls::Renewing;

/// A store built from a URL and its options: what it stores with, and what takes uploads in parts
/// (the same store, when it takes them).
#[derive(Clone)]
pub(crate) struct StoreClients {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) parts: Option<Arc<dyn MultipartStore>>,
}

/// Builds the store again, trusting these CA certificates besides the system's; or why not.
pub(crate) type Rebuild = Box<dyn Fn(&[Certificate]) -> std::result::Result<StoreClients, String> + Send + Sync>;

/// A store that is built again when its `tls.ca` file changes (module docs).
pub(crate) struct RenewingStore {
    /// The CA file (its path as the pipeline's folder makes it).
    ca: PathBuf,
    rebuild: Rebuild,
    clients: Renewing<StoreClients>,
}

impl std::fmt::Debug for RenewingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingStore").field("ca", &self.ca).finish()
    }
}

impl std::fmt::Display for RenewingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (Showing the store looks at nothing.)
        write!(f, "{}", self.clients.in_use().store)
    }
}

impl RenewingStore {
    /// `clients`, built from `ca` as it is now; `rebuild` makes them again from its certificates.
    pub(crate) fn new(ca: PathBuf, clients: StoreClients, rebuild: Rebuild) -> RenewingStore {
        let clients = Renewing::new("the object store's `tls.ca`".into(), vec![ca.clone()], clients);
        RenewingStore { ca, rebuild, clients }
    }

    /// Where its refused renewals are counted.
    pub(crate) fn tls_metrics(&self) -> crate::tls::TlsMetrics {
        self.clients.tls_metrics()
    }

    /// The store to send a request with: built again first if its CA file changed (module docs).
    fn current(&self) -> StoreClients {
        self.clients.current(|| (self.rebuild)(&crate::tls::store_certificates(&self.ca)?))
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.current().store
    }

    fn parts(&self) -> Result<Arc<dyn MultipartStore>> {
        self.current()
            .parts
            .ok_or_else(|| object_store::Error::NotSupported { source: "this store takes no uploads in parts".into() })
    }
}

#[async_trait]
impl ObjectStore for RenewingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.store().put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.store().put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.store().get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.store().get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.store().delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.store().list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.store().list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.store().list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.store().copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.store().rename_opts(from, to, options).await
    }
}

#[async_trait]
impl MultipartStore for RenewingStore {
    async fn create_multipart(&self, path: &Path) -> Result<MultipartId> {
        self.parts()?.create_multipart(path).await
    }

    async fn create_multipart_opts(&self, path: &Path, opts: PutMultipartOptions) -> Result<MultipartId> {
        self.parts()?.create_multipart_opts(path, opts).await
    }

    async fn put_part(&self, path: &Path, id: &MultipartId, part_idx: usize, data: PutPayload) -> Result<PartId> {
        self.parts()?.put_part(path, id, part_idx, data).await
    }

    async fn complete_multipart(&self, path: &Path, id: &MultipartId, parts: Vec<PartId>) -> Result<PutResult> {
        self.parts()?.complete_multipart(path, id, parts).await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> Result<()> {
        self.parts()?.abort_multipart(path, id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use object_store::ObjectStoreExt as _;
    use object_store::memory::InMemory;

    use super::*;

    /// The CA file is renewed: a file that is not PEM is refused without building the store again
    /// and the store built before keeps storing; a good one builds a new store, which stores from
    /// then on. The refusal is counted.
    #[tokio::test]
    async fn a_renewed_ca_builds_the_store_again_and_a_refused_one_keeps_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let good = crate::tls::fixture_ca();
        let write = |bytes: &[u8]| crate::tls::write_settled(&ca, bytes);
        write(&good);
        let first = Arc::new(InMemory::new());
        let built = Arc::new(Mutex::new(Vec::<Arc<InMemory>>::new()));
        let rebuilds = Arc::new(AtomicUsize::new(0));
        let rebuild: Rebuild = {
            let (built, rebuilds) = (Arc::clone(&built), Arc::clone(&rebuilds));
            Box::new(move |roots: &[Certificate]| {
                assert_eq!(roots.len(), 1);
                rebuilds.fetch_add(1, Ordering::Relaxed);
                let store = Arc::new(InMemory::new());
                built.lock().unwrap().push(Arc::clone(&store));
                Ok(StoreClients { store: store.clone(), parts: Some(store) })
            })
        };
        let clients = StoreClients { store: first.clone(), parts: Some(first.clone()) };
        let renewing = RenewingStore::new(ca.clone(), clients, rebuild);
        let noted = crate::tls::NotedRenewals::default();
        renewing.tls_metrics().meter_with(noted.clone());
        let refusals = || noted.noted().len() - 1;
        put_now(&renewing, "a").await;
        assert!(holds(&first, "a").await, "nothing changed: the store built at start");
        write(b"not a certificate");
        put_now(&renewing, "b").await;
        assert!(holds(&first, "b").await, "a file that is not PEM is refused");
        assert_eq!(rebuilds.load(Ordering::Relaxed), 0);
        assert_eq!(refusals(), 1, "the refusal is counted");
        write(&good);
        put_now(&renewing, "c").await;
        assert_eq!(rebuilds.load(Ordering::Relaxed), 1);
        let second = Arc::clone(&built.lock().unwrap()[0]);
        assert!(holds(&second, "c").await && !holds(&first, "c").await, "the renewed file is taken");
        assert_eq!(refusals(), 1);
        // An upload in parts goes through the store of its time too.
        let id = renewing.create_multipart(&Path::from("d")).await.unwrap();
        let part = renewing.put_part(&Path::from("d"), &id, 0, PutPayload::from_static(b"y")).await.unwrap();
        renewing.complete_multipart(&Path::from("d"), &id, vec![part]).await.unwrap();
        assert!(holds(&second, "d").await);
    }

    /// Stores an object named `name` through `store`, its CA file looked at first.
    async fn put_now(store: &RenewingStore, name: &str) {
        store.clients.look_next_time();
        store.put(&Path::from(name), PutPayload::from_static(b"x")).await.unwrap();
    }

    async fn holds(store: &InMemory, name: &str) -> bool {
        store.head(&Path::from(name)).await.is_ok()
    }
}
