//! Writes seed inputs for the fuzz targets into `fuzz/corpus/<target>/`: valid frames and
//! changes (honest and hostile) for the fuzzer to mutate, so it starts past the parsers.
//! Run from `fuzz/`: `cargo +nightly run --example seed_corpus`.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ROOT};
use edgesync_proto::doc::sensor_genesis;
use edgesync_proto::wire::{
    Ack, AuthorStatement, ChangeBytes, Changes, DocChanges, DocClock, Message, SlotAnswer, SlotQuery,
    Summary,
};
use edgesync_proto::{DocId, Reading, VectorClock};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = std::path::Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    let mut sensor = Automerge::new();
    sensor.apply_changes([sensor_genesis().clone()]).unwrap();
    // On the genesis alone, so it applies to any sensor document.
    let mut bare = sensor.fork();
    let mut tx = bare.transaction();
    tx.delete(ROOT, "readings").unwrap();
    tx.commit();
    write(
        "remote_change",
        "deletes-readings",
        bare.get_last_local_change().unwrap().raw_bytes(),
    );
    let (_, map) = automerge::ReadDoc::get(&sensor, ROOT, "readings")
        .unwrap()
        .unwrap();
    let body = Reading::from_json("r-1", 5, &serde_json::json!({"v": 1}))
        .unwrap()
        .encode();
    let mut changes = Vec::new();
    let mut tx = sensor.transaction();
    tx.put(&map, "r-1", body.as_str()).unwrap();
    tx.commit();
    changes.push(sensor.get_last_local_change().unwrap());
    let mut tx = sensor.transaction();
    tx.delete(ROOT, "readings").unwrap();
    tx.commit();
    changes.push(sensor.get_last_local_change().unwrap());
    let mut generic = Automerge::new();
    let mut tx = generic.transaction();
    let mut obj = ROOT;
    for _ in 0..40 {
        obj = tx.put_object(&obj, "n", ObjType::Map).unwrap();
    }
    tx.put(ROOT, "big", "0".repeat(5000)).unwrap();
    tx.commit();
    let mut big = generic.get_last_local_change().unwrap();
    changes.push(big.clone());
    for (i, c) in changes.iter().enumerate() {
        write("remote_change", &format!("change-{i}"), c.raw_bytes());
    }
    write("remote_change", "compressed", &big.bytes());
    write("remote_change", "genesis", sensor_genesis().raw_bytes());
    let doc = DocId::new("site-a/t1").unwrap();
    let clock: VectorClock = [(edgesync_proto::Actor([7; 16]), 3)].into_iter().collect();
    let messages = [
        Message::Summary(Summary {
            entries: vec![DocClock {
                doc: doc.clone(),
                clock: clock.clone(),
            }],
            last: true,
        }),
        Message::Changes(Changes {
            batch: 0,
            docs: vec![DocChanges {
                doc: doc.clone(),
                changes: changes
                    .iter()
                    .map(|c| ChangeBytes(c.raw_bytes().to_vec()))
                    .collect(),
                signed: vec![],
            }],
        }),
        Message::Ack(Ack {
            batch: 0,
            clocks: vec![DocClock { doc, clock }],
            last: true,
        }),
        Message::SlotQuery(SlotQuery { space: [3; 32] }),
        Message::SlotAnswer(SlotAnswer {
            statement: Some(AuthorStatement(vec![1; 40])),
        }),
    ];
    // Saved documents: the peer's own (its changes pass authorship), and the ones above.
    let mut own = Automerge::new().with_actor(edgesync_proto::fuzzing::snapshot_actor());
    for k in 0..20i64 {
        let mut tx = own.transaction();
        tx.put(ROOT, format!("k{}", k % 3), k).unwrap();
        if k % 5 == 0 {
            tx.put_object(ROOT, format!("o{k}"), ObjType::List).unwrap();
        }
        tx.commit();
    }
    write("snapshot", "own", &own.save());
    write("snapshot", "sensor", &sensor.save());
    write("snapshot", "generic", &generic.save());
    for (i, m) in messages.iter().enumerate() {
        let frame = m.to_frame();
        write("decode", &format!("frame-{i}"), &frame);
        write("decode", &format!("payload-{i}"), &frame[4..]);
        write("session", &format!("frame-{i}"), &frame);
    }
}
