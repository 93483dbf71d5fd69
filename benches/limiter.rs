//! The per-account limiter check on the hot path, in-process store (no persistence).
//!
//! `cargo bench --bench limiter`

use criterion::{Criterion, criterion_group, criterion_main};
use kataven_hub::limits::memory::MemoryStore;
use kataven_hub::limits::{Limiter, Store};
use kataven_hub::tenancy::catalog::Limits;
use prometheus_client::metrics::counter::Counter;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limiter = Limiter::new(Store::Memory(MemoryStore::new(None)), Counter::default());
    let limits = Limits {
        per_minute: u32::MAX,
        per_hour: u32::MAX,
        per_day: u32::MAX,
        concurrent: 1_000,
        daily_minutes: 0,
    };
    let accounts: Vec<String> = (0..1_000).map(|i| format!("account-{i}")).collect();
    let mut group = c.benchmark_group("limiter");
    group.bench_function("admit_and_release_one_account", |b| {
        b.to_async(&rt).iter(|| async {
            let admission = limiter.admit("acme", &limits).await;
            assert!(admission.is_ok());
        })
    });
    let mut i = 0;
    group.bench_function("admit_and_release_1000_accounts", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % accounts.len();
            let account = &accounts[i];
            let limiter = &limiter;
            let limits = &limits;
            async move {
                let admission = limiter.admit(account, limits).await;
                assert!(admission.is_ok());
            }
        })
    });
    let refused = Limits {
        per_minute: 0,
        ..limits
    };
    group.bench_function("refuse", |b| {
        b.to_async(&rt).iter(|| async {
            assert!(limiter.admit("acme", &refused).await.is_err());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
