//! Language-model and classification batches, checked against fastai 2.8.12 outputs
//! and hand-computed layouts.

use std::collections::HashSet;

use ulmfit::text::batches::{
    pad_batch, pad_batch_chunked, restore_order, sorted_order, sortish_order, BatchError,
    LmBatches, LmLayout, LmOrder, SplitMix64, PAD_ID,
};
use ulmfit::text::token_file::{TokenFile, TokenFileWriter};

const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Five documents of lengths 7, 5, 9, 4 and 6 (31 tokens), each starting with
/// xxbos (id 2); document k contains 10k + 1, 10k + 2, ... after it.
fn fastai_docs() -> Vec<Vec<u32>> {
    [7u32, 5, 9, 4, 6]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let base = 10 * (k as u32 + 1);
            std::iter::once(2).chain((1..n).map(|j| base + j)).collect()
        })
        .collect()
}

/// Rows of a `[batch_size, seq_len]` matrix.
type Rows = &'static [&'static [u32]];

/// Expected batches of one `LMDataLoader` configuration: (x rows, y rows) per batch.
struct FastaiCase {
    batch_size: usize,
    seq_len: usize,
    row_len: usize,
    n_batches: usize,
    last_len: usize,
    batches: &'static [(Rows, Rows)],
}

/// Output of fastai 2.8.12's `LMDataLoader(docs, bs=batch_size, seq_len=seq_len,
/// shuffle=False)` on `fastai_docs()`, with `bl`, `n_batches` and `last_len` read
/// from the loader.
const FASTAI_CASES: &[FastaiCase] = &[
    // batch_size 2, seq_len 4
    FastaiCase {
        batch_size: 2,
        seq_len: 4,
        row_len: 15,
        n_batches: 4,
        last_len: 3,
        batches: &[
            (
                &[&[2, 11, 12, 13], &[33, 34, 35, 36]],
                &[&[11, 12, 13, 14], &[34, 35, 36, 37]],
            ),
            (
                &[&[14, 15, 16, 2], &[37, 38, 2, 41]],
                &[&[15, 16, 2, 21], &[38, 2, 41, 42]],
            ),
            (
                &[&[21, 22, 23, 24], &[42, 43, 2, 51]],
                &[&[22, 23, 24, 2], &[43, 2, 51, 52]],
            ),
            (
                &[&[2, 31, 32], &[52, 53, 54]],
                &[&[31, 32, 33], &[53, 54, 55]],
            ),
        ],
    },
    // batch_size 3, seq_len 5
    FastaiCase {
        batch_size: 3,
        seq_len: 5,
        row_len: 10,
        n_batches: 2,
        last_len: 5,
        batches: &[
            (
                &[
                    &[2, 11, 12, 13, 14],
                    &[23, 24, 2, 31, 32],
                    &[38, 2, 41, 42, 43],
                ],
                &[
                    &[11, 12, 13, 14, 15],
                    &[24, 2, 31, 32, 33],
                    &[2, 41, 42, 43, 2],
                ],
            ),
            (
                &[
                    &[15, 16, 2, 21, 22],
                    &[33, 34, 35, 36, 37],
                    &[2, 51, 52, 53, 54],
                ],
                &[
                    &[16, 2, 21, 22, 23],
                    &[34, 35, 36, 37, 38],
                    &[51, 52, 53, 54, 55],
                ],
            ),
        ],
    },
    // batch_size 4, seq_len 3
    FastaiCase {
        batch_size: 4,
        seq_len: 3,
        row_len: 7,
        n_batches: 3,
        last_len: 1,
        batches: &[
            (
                &[&[2, 11, 12], &[2, 21, 22], &[32, 33, 34], &[2, 41, 42]],
                &[&[11, 12, 13], &[21, 22, 23], &[33, 34, 35], &[41, 42, 43]],
            ),
            (
                &[&[13, 14, 15], &[23, 24, 2], &[35, 36, 37], &[43, 2, 51]],
                &[&[14, 15, 16], &[24, 2, 31], &[36, 37, 38], &[2, 51, 52]],
            ),
            (&[&[16], &[31], &[38], &[52]], &[&[2], &[32], &[2], &[53]]),
        ],
    },
    // batch_size 1, seq_len 10
    FastaiCase {
        batch_size: 1,
        seq_len: 10,
        row_len: 30,
        n_batches: 3,
        last_len: 10,
        batches: &[
            (
                &[&[2, 11, 12, 13, 14, 15, 16, 2, 21, 22]],
                &[&[11, 12, 13, 14, 15, 16, 2, 21, 22, 23]],
            ),
            (
                &[&[23, 24, 2, 31, 32, 33, 34, 35, 36, 37]],
                &[&[24, 2, 31, 32, 33, 34, 35, 36, 37, 38]],
            ),
            (
                &[&[38, 2, 41, 42, 43, 2, 51, 52, 53, 54]],
                &[&[2, 41, 42, 43, 2, 51, 52, 53, 54, 55]],
            ),
        ],
    },
    // batch_size 5, seq_len 2
    FastaiCase {
        batch_size: 5,
        seq_len: 2,
        row_len: 6,
        n_batches: 3,
        last_len: 2,
        batches: &[
            (
                &[&[2, 11], &[16, 2], &[2, 31], &[36, 37], &[43, 2]],
                &[&[11, 12], &[2, 21], &[31, 32], &[37, 38], &[2, 51]],
            ),
            (
                &[&[12, 13], &[21, 22], &[32, 33], &[38, 2], &[51, 52]],
                &[&[13, 14], &[22, 23], &[33, 34], &[2, 41], &[52, 53]],
            ),
            (
                &[&[14, 15], &[23, 24], &[34, 35], &[41, 42], &[53, 54]],
                &[&[15, 16], &[24, 2], &[35, 36], &[42, 43], &[54, 55]],
            ),
        ],
    },
    // batch_size 2, seq_len 15
    FastaiCase {
        batch_size: 2,
        seq_len: 15,
        row_len: 15,
        n_batches: 1,
        last_len: 15,
        batches: &[(
            &[
                &[2, 11, 12, 13, 14, 15, 16, 2, 21, 22, 23, 24, 2, 31, 32],
                &[33, 34, 35, 36, 37, 38, 2, 41, 42, 43, 2, 51, 52, 53, 54],
            ],
            &[
                &[11, 12, 13, 14, 15, 16, 2, 21, 22, 23, 24, 2, 31, 32, 33],
                &[34, 35, 36, 37, 38, 2, 41, 42, 43, 2, 51, 52, 53, 54, 55],
            ],
        )],
    },
];

fn rows(matrix: &[u32], seq_len: usize) -> Vec<Vec<u32>> {
    matrix.chunks(seq_len).map(<[u32]>::to_vec).collect()
}

fn check_fastai_cases<S: ulmfit::text::batches::TokenSource + ?Sized>(source: &S) {
    for case in FASTAI_CASES {
        let name = format!("batch_size {}, seq_len {}", case.batch_size, case.seq_len);
        let batches =
            LmBatches::new(source, case.batch_size, case.seq_len, LmOrder::Sequential).unwrap();
        let layout = batches.layout();
        assert_eq!(layout.row_len, case.row_len, "{name}: row_len");
        assert_eq!(layout.n_batches, case.n_batches, "{name}: n_batches");
        assert_eq!(layout.last_len, case.last_len, "{name}: last_len");

        let actual: Vec<_> = batches.iter().collect();
        assert_eq!(actual.len(), case.batches.len(), "{name}: batch count");
        for (b, (batch, (x, y))) in actual.iter().zip(case.batches).enumerate() {
            assert_eq!(batch.batch_size, case.batch_size, "{name}, batch {b}: rows");
            assert_eq!(rows(&batch.x, batch.seq_len), *x, "{name}, batch {b}: x");
            assert_eq!(rows(&batch.y, batch.seq_len), *y, "{name}, batch {b}: y");
        }
    }
}

#[test]
fn lm_batches_match_fastai() {
    check_fastai_cases(&fastai_docs());
}

#[test]
fn lm_batches_from_token_file_match_fastai() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let mut writer = TokenFileWriter::create(&path, 100, HASH, None).unwrap();
    for doc in fastai_docs() {
        writer.push_document(&doc, None).unwrap();
    }
    writer.finish().unwrap();
    let file = TokenFile::open(&path, Some(HASH)).unwrap();
    check_fastai_cases(&file);
}

#[test]
fn lm_layout_stream_cut() {
    // 31 tokens, batch size 4: (31 - 1) / 4 = 7 tokens per row, so inputs cover
    // tokens 0 to 27. Token 28 is only the final target, and tokens 29 and 30 are dropped.
    let layout = LmLayout::new(31, 4, 3).unwrap();
    assert_eq!(layout.row_len, 7);
    assert_eq!(layout.n_tokens_used(), 28);
    assert_eq!(layout.n_batches, 3);
    assert_eq!(layout.last_len, 1);
    assert_eq!(layout.window_len(0), 3);
    assert_eq!(layout.window_len(1), 3);
    assert_eq!(layout.window_len(2), 1);
    // Row r starts at r * 7, window b at b * 3 inside the row.
    assert_eq!(layout.window_start(0, 0), 0);
    assert_eq!(layout.window_start(1, 0), 7);
    assert_eq!(layout.window_start(3, 2), 27);
}

#[test]
fn lm_layout_exact_multiple() {
    // 13 tokens, batch size 3: 12 / 3 = 4 per row, two full windows of 2.
    let layout = LmLayout::new(13, 3, 2).unwrap();
    assert_eq!(layout.row_len, 4);
    assert_eq!(layout.n_batches, 2);
    assert_eq!(layout.last_len, 2);
}

#[test]
fn lm_batches_hand_computed() {
    // Stream 2 3 4 2 5 6 7: row_len (7 - 1) / 2 = 3, windows of 2 then 1.
    let docs = vec![vec![2, 3, 4], vec![2, 5, 6, 7]];
    let batches = LmBatches::new(&docs, 2, 2, LmOrder::Sequential).unwrap();
    assert_eq!(batches.n_batches(), 2);

    let first = batches.batch(0).unwrap();
    assert_eq!(first.seq_len, 2);
    assert_eq!(first.x, vec![2, 3, 2, 5]);
    assert_eq!(first.y, vec![3, 4, 5, 6]);

    let last = batches.batch(1).unwrap();
    assert_eq!(last.seq_len, 1);
    assert_eq!(last.x_row(0), &[4]);
    assert_eq!(last.y_row(0), &[2]);
    assert_eq!(last.x_row(1), &[6]);
    assert_eq!(last.y_row(1), &[7]);

    assert!(batches.batch(2).is_none());
}

#[test]
fn lm_batches_skip_empty_documents() {
    let docs = vec![vec![], vec![2, 3], vec![], vec![], vec![2, 5, 6], vec![]];
    let batches = LmBatches::new(&docs, 1, 10, LmOrder::Sequential).unwrap();
    let batch = batches.batch(0).unwrap();
    assert_eq!(batch.x, vec![2, 3, 2, 5]);
    assert_eq!(batch.y, vec![3, 2, 5, 6]);
}

#[test]
fn lm_layout_errors() {
    assert_eq!(
        LmLayout::new(2, 2, 4),
        Err(BatchError::CorpusTooSmall {
            n_tokens: 2,
            batch_size: 2
        })
    );
    assert_eq!(
        LmLayout::new(0, 1, 4),
        Err(BatchError::CorpusTooSmall {
            n_tokens: 0,
            batch_size: 1
        })
    );
    assert_eq!(LmLayout::new(10, 0, 4), Err(BatchError::ZeroBatchSize));
    assert_eq!(LmLayout::new(10, 2, 0), Err(BatchError::ZeroSeqLen));
    assert!(LmLayout::new(3, 2, 4).is_ok());
}

#[test]
fn shuffled_order_is_permutation() {
    let docs: Vec<Vec<u32>> = (0..40).map(|k| vec![2, k]).collect();
    let batches = LmBatches::new(&docs, 2, 5, LmOrder::Shuffled { seed: 7, epoch: 0 }).unwrap();
    let order = batches.document_order().unwrap().to_vec();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..40).collect::<Vec<_>>());
    assert_ne!(order, (0..40).collect::<Vec<_>>());
}

#[test]
fn shuffled_order_deterministic_per_seed() {
    let docs: Vec<Vec<u32>> = (0..40).map(|k| vec![2, k]).collect();
    let order_of = |seed, epoch| {
        LmBatches::new(&docs, 2, 5, LmOrder::Shuffled { seed, epoch })
            .unwrap()
            .document_order()
            .unwrap()
            .to_vec()
    };
    assert_eq!(order_of(7, 0), order_of(7, 0));
    assert_ne!(order_of(7, 0), order_of(8, 0));
    assert_ne!(order_of(7, 0), order_of(7, 1));
}

#[test]
fn shuffled_batches_gather_permuted_stream() {
    // Documents of different lengths, some empty, so windows cross document edges.
    let docs: Vec<Vec<u32>> = (0..25u32)
        .map(|k| (0..k % 6).map(|j| 100 * k + j).collect())
        .collect();
    let shuffled = LmBatches::new(&docs, 3, 4, LmOrder::Shuffled { seed: 11, epoch: 2 }).unwrap();
    let permuted: Vec<Vec<u32>> = shuffled
        .document_order()
        .unwrap()
        .iter()
        .map(|&i| docs[i].clone())
        .collect();
    let expected = LmBatches::new(&permuted, 3, 4, LmOrder::Sequential).unwrap();
    assert_eq!(shuffled.layout(), expected.layout());
    let actual: Vec<_> = shuffled.iter().collect();
    let expected_batches: Vec<_> = expected.iter().collect();
    assert_eq!(actual, expected_batches);
}

#[test]
fn splitmix64_reference_output() {
    // First output of SplitMix64 for state 0, recomputed with an independent Python
    // implementation of the same recurrence.
    assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
}

#[test]
fn splitmix64_below_stays_in_range() {
    let mut rng = SplitMix64::new(3);
    let mut seen = [false; 5];
    for _ in 0..200 {
        let value = rng.below(5);
        assert!(value < 5, "{value}");
        seen[value as usize] = true;
    }
    assert_eq!(seen, [true; 5]);
}

#[test]
fn sorted_order_longest_first_stable() {
    assert_eq!(sorted_order(&[3, 7, 7, 1, 5]), vec![1, 2, 4, 0, 3]);
    assert_eq!(sorted_order(&[]), Vec::<usize>::new());
}

#[test]
fn sortish_single_chunk_batches() {
    // Sorted by length: 12 (1), 10 (6), 9 (3), 8 (8), 7 (5), 5 (0), 4 (9), 3 (2),
    // 2 (7), 1 (4). Batches of 3: [1 6 3] [8 5 0] [9 2 7] [4]. The first and last stay
    // in place and the two middle batches come in either order.
    let lengths = [5, 12, 3, 9, 1, 7, 10, 2, 8, 4];
    let middle_a = [8, 5, 0, 9, 2, 7];
    let middle_b = [9, 2, 7, 8, 5, 0];
    let mut seen_a = false;
    let mut seen_b = false;
    for seed in 0..20 {
        let order = sortish_order(&lengths, 3, seed).unwrap();
        assert_eq!(&order[..3], &[1, 6, 3], "seed {seed}: first batch");
        assert_eq!(&order[9..], &[4], "seed {seed}: last batch");
        let middle = &order[3..9];
        assert!(
            middle == middle_a || middle == middle_b,
            "seed {seed}: middle {middle:?}"
        );
        seen_a |= middle == middle_a;
        seen_b |= middle == middle_b;
    }
    assert!(seen_a, "the middle batches never kept their sorted order");
    assert!(seen_b, "the middle batches were never swapped");
}

#[test]
fn sortish_chunks_sorted_within_batches() {
    // 250 documents with batch size 2: chunks of 100, 100 and 50 indices.
    let lengths: Vec<usize> = (0..250).map(|i| (i * 37) % 101).collect();
    let order = sortish_order(&lengths, 2, 5).unwrap();

    let unique: HashSet<usize> = order.iter().copied().collect();
    assert_eq!(order.len(), 250);
    assert_eq!(unique.len(), 250);

    // The first document with the maximum length, 100, is index 30 (30 * 37 = 1110 =
    // 10 * 101 + 100).
    assert_eq!(order[0], 30);
    for (b, batch) in order.chunks(2).enumerate() {
        assert!(
            lengths[batch[0]] >= lengths[batch[1]],
            "batch {b} is not sorted longest first: {batch:?}"
        );
    }
}

#[test]
fn sortish_deterministic_per_seed() {
    let lengths: Vec<usize> = (0..300).map(|i| (i * 53) % 97).collect();
    let first = sortish_order(&lengths, 4, 1).unwrap();
    assert_eq!(first, sortish_order(&lengths, 4, 1).unwrap());
    assert_ne!(first, sortish_order(&lengths, 4, 2).unwrap());
}

#[test]
fn sortish_edge_cases() {
    assert_eq!(sortish_order(&[], 4, 0).unwrap(), Vec::<usize>::new());
    assert_eq!(sortish_order(&[3], 4, 0).unwrap(), vec![0]);
    assert_eq!(sortish_order(&[3, 1], 0, 0), Err(BatchError::ZeroBatchSize));
    // Ties on the maximum: the first index with it is swapped to the front.
    let order = sortish_order(&[2, 9, 9, 1], 1, 4).unwrap();
    assert_eq!(order[0], 1);
}

#[test]
fn pad_batch_left_with_pad_id() {
    let docs = vec![vec![2, 5, 6], vec![2], vec![2, 7]];
    let batch = pad_batch(&docs, PAD_ID, true);
    assert_eq!(batch.batch_size, 3);
    assert_eq!(batch.max_len, 3);
    assert_eq!(batch.lengths, vec![3, 1, 2]);
    assert_eq!(batch.ids, vec![2, 5, 6, 1, 1, 2, 1, 2, 7]);
}

#[test]
fn pad_batch_right() {
    let docs = vec![vec![2, 5, 6], vec![2]];
    let batch = pad_batch(&docs, 0, false);
    assert_eq!(batch.row(0), &[2, 5, 6]);
    assert_eq!(batch.row(1), &[2, 0, 0]);
}

#[test]
fn pad_batch_empty() {
    let docs: Vec<Vec<u32>> = Vec::new();
    let batch = pad_batch(&docs, PAD_ID, true);
    assert_eq!(batch.batch_size, 0);
    assert_eq!(batch.max_len, 0);
    assert!(batch.ids.is_empty());
}

#[test]
fn pad_batch_from_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.tok");
    let mut writer = TokenFileWriter::create(&path, 100, HASH, None).unwrap();
    writer.push_document(&[2, 40, 41], None).unwrap();
    writer.push_document(&[2, 50], None).unwrap();
    writer.finish().unwrap();
    let file = TokenFile::open(&path, None).unwrap();
    let docs: Vec<_> = file.documents().collect();
    let batch = pad_batch(&docs, PAD_ID, true);
    assert_eq!(batch.ids, vec![2, 40, 41, 1, 2, 50]);
}

#[test]
fn pad_batch_chunked_matches_fastai() {
    // Output of fastai 2.8.12's `pad_input_chunk` on documents [2 5 6 7 8 9 10],
    // [2 5 6] and [2] with pad_idx 1.
    let docs = vec![vec![2, 5, 6, 7, 8, 9, 10], vec![2, 5, 6], vec![2]];
    let cases: [(usize, bool, [[u32; 7]; 3]); 5] = [
        (
            2,
            true,
            [
                [2, 5, 6, 7, 8, 9, 10],
                [1, 1, 1, 1, 2, 5, 6],
                [1, 1, 1, 1, 1, 1, 2],
            ],
        ),
        (
            3,
            true,
            [
                [2, 5, 6, 7, 8, 9, 10],
                [1, 1, 1, 2, 5, 6, 1],
                [1, 1, 1, 1, 1, 1, 2],
            ],
        ),
        (
            72,
            true,
            [
                [2, 5, 6, 7, 8, 9, 10],
                [2, 5, 6, 1, 1, 1, 1],
                [2, 1, 1, 1, 1, 1, 1],
            ],
        ),
        (
            2,
            false,
            [
                [2, 5, 6, 7, 8, 9, 10],
                [2, 5, 6, 1, 1, 1, 1],
                [2, 1, 1, 1, 1, 1, 1],
            ],
        ),
        (
            3,
            false,
            [
                [2, 5, 6, 7, 8, 9, 10],
                [2, 5, 6, 1, 1, 1, 1],
                [2, 1, 1, 1, 1, 1, 1],
            ],
        ),
    ];
    for (seq_len, pad_first, expected) in cases {
        let batch = pad_batch_chunked(&docs, PAD_ID, pad_first, seq_len).unwrap();
        for (r, row) in expected.iter().enumerate() {
            assert_eq!(
                batch.row(r),
                row,
                "seq_len {seq_len}, pad_first {pad_first}, row {r}"
            );
        }
    }
    assert_eq!(
        pad_batch_chunked(&docs, PAD_ID, true, 0),
        Err(BatchError::ZeroSeqLen)
    );
}

#[test]
fn restore_order_round_trip() {
    let lengths = [4, 9, 1, 7, 3];
    let order = sorted_order(&lengths);
    assert_eq!(order, vec![1, 3, 0, 4, 2]);
    // Outputs computed in sorted order: here the length of each document times 10.
    let outputs: Vec<usize> = order.iter().map(|&i| lengths[i] * 10).collect();
    let restored = restore_order(outputs, &order).unwrap();
    assert_eq!(restored, vec![40, 90, 10, 70, 30]);

    let shuffled = sortish_order(&lengths, 2, 9).unwrap();
    let outputs: Vec<usize> = shuffled.to_vec();
    assert_eq!(
        restore_order(outputs, &shuffled).unwrap(),
        vec![0, 1, 2, 3, 4]
    );
}

#[test]
fn restore_order_errors() {
    assert_eq!(
        restore_order(vec!['a', 'b'], &[0]),
        Err(BatchError::LengthMismatch {
            outputs: 2,
            order: 1
        })
    );
    assert_eq!(
        restore_order(vec!['a', 'b', 'c'], &[0, 2, 0]),
        Err(BatchError::NotAPermutation {
            position: 2,
            value: 0,
            len: 3
        })
    );
    assert_eq!(
        restore_order(vec!['a', 'b'], &[0, 5]),
        Err(BatchError::NotAPermutation {
            position: 1,
            value: 5,
            len: 2
        })
    );
}
