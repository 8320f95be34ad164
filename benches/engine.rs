//! In-process costs of the no-op path: fingerprinting, stat-cache hits, and planning a
//! whole generated pipeline. `benches/compare.py` measures the binary beside ninja, make, DVC and Snakemake.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dagrun::fingerprint::{ActionId, FileHash, FingerprintInputs, HashCache, OutputHash};
use dagrun::graph::Dag;
use dagrun::planner::{EvalContext, plan_build};
use dagrun::{Engine, Registry};

fn fingerprint(c: &mut Criterion) {
    let inputs = FingerprintInputs {
        action: ActionId::Shell { cmd: "python features.py --window ${params.window}".into() },
        params: toml::toml! { window = 20
        seed = 7 },
        env: BTreeMap::from([("PYTHONHASHSEED".into(), Some("0".into()))]),
        inputs: (0..4).map(|i| (format!("data/in{i}.csv"), FileHash(blake3::hash(&[i])))).collect(),
        declared_inputs: (0..4).map(|i| format!("data/in{i}.csv")).collect(),
        outputs: vec!["data/features.arrow".into()],
        names: BTreeMap::new(),
        upstream: BTreeMap::from([("ticks".into(), OutputHash(blake3::hash(b"t")))]),
    };
    c.bench_function("fingerprint of one stage", |b| b.iter(|| black_box(&inputs).fingerprint()));
}

/// A chain of `n` stages in a temp dir, built once so that planning finds it up to date.
fn built_pipeline(n: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("src.txt"), "x").unwrap();
    let mut text = String::new();
    for i in 0..n {
        let input = if i == 0 { "src.txt".to_string() } else { format!("s{}.txt", i - 1) };
        text.push_str(&format!(
            "[stages.s{i}]\ncmd = \"cp {input} s{i}.txt\"\ninputs = [\"{input}\"]\noutputs = [\"s{i}.txt\"]\n"
        ));
    }
    std::fs::write(dir.path().join("pipeline.toml"), text).unwrap();
    let engine = Engine::load(&dir.path().join("pipeline.toml"), Registry::new()).unwrap();
    engine.build(&Default::default(), &mut |_| {}).unwrap();
    (dir, engine)
}

fn planning(c: &mut Criterion) {
    let (dir, engine) = built_pipeline(500);
    let state = dagrun::state::State::open(&engine.spec().state_path).unwrap();
    let records = state.load_records().unwrap();
    let cache_entries = state.load_hash_cache().unwrap();
    c.bench_function("plan 500 up-to-date stages", |b| {
        b.iter(|| {
            let cache = HashCache::new(dir.path(), cache_entries.clone(), &dagrun::fingerprint::CacheClock::Local);
            let ctx = EvalContext {
                spec: engine.spec(),
                dag: engine.dag(),
                records: &records,
                cache: &cache,
                registry: &Registry::new(),
                force: false,
            };
            black_box(plan_build(&ctx, &vec![true; 500], None))
        })
    });
    c.bench_function("load spec and DAG of 500 stages", |b| {
        b.iter(|| {
            let engine = Engine::load(&dir.path().join("pipeline.toml"), Registry::new()).unwrap();
            black_box(Dag::build(engine.spec()).unwrap().len())
        })
    });
}

/// One large file hashed as an input or output is (`DAGRUN_HASH_MIB`, default 1024 MiB),
/// to set beside `b3sum` on the same file: `benches/hash_vs_b3sum.sh` runs both.
fn hash_large_file(c: &mut Criterion) {
    let mib: usize = std::env::var("DAGRUN_HASH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    for _ in 0..mib {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    let mut group = c.benchmark_group("hash");
    group.sample_size(10);
    group.throughput(criterion::Throughput::Bytes((mib << 20) as u64));
    group.bench_function(format!("{mib} MiB file"), |b| b.iter(|| dagrun::fingerprint::hash_file(&path).unwrap()));
    group.finish();
}

criterion_group!(benches, fingerprint, planning, hash_large_file);
criterion_main!(benches);
