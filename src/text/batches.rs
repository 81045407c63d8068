//! Training batches laid out as fastai 2.8 lays them out.
//!
//! Language-model batches ([`LmBatches`]) follow fastai's `LMDataLoader`. The
//! documents are concatenated into one token stream, and the stream is cut into
//! `batch_size` contiguous rows. The rows are read in windows of `seq_len` tokens, with
//! the target shifted one token ahead of the input.
//!
//! Classification batches follow fastai's `SortedDL`: [`sortish_order`] groups
//! documents of similar length for training, [`sorted_order`] sorts them by length for
//! validation, [`pad_batch`] and [`pad_batch_chunked`] pad a batch to a matrix, and
//! [`restore_order`] puts per-document outputs back in corpus order.
//!
//! Shuffling uses [`SplitMix64`], a small seeded generator, so an order depends only
//! on the seed. fastai draws from NumPy and Python generators instead, so the shuffled
//! orders differ from fastai's, while the layout rules are the same.

use std::cmp::Reverse;

use crate::text::token_file::{TokenFile, TokenSlice};

/// fastai's padding id: the index of `xxpad` in the vocabulary.
pub const PAD_ID: u32 = 1;

/// Number of batches per chunk that [`sortish_order`] sorts by length (fastai's value).
pub const SORTISH_CHUNK_BATCHES: usize = 50;

/// Errors raised while building batches.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// The batch size is zero.
    #[error("invalid batch size 0: expected at least 1")]
    ZeroBatchSize,
    /// The sequence length is zero.
    #[error("invalid sequence length 0: expected at least 1")]
    ZeroSeqLen,
    /// The corpus has too few tokens to give every row at least one input token.
    #[error("corpus of {n_tokens} tokens is too small for batch size {batch_size}: language-model batches need at least batch size + 1 tokens; lower the batch size or add text")]
    CorpusTooSmall {
        /// Tokens in the corpus.
        n_tokens: usize,
        /// Requested batch size.
        batch_size: usize,
    },
    /// The number of outputs differs from the length of the order.
    #[error("cannot restore order: {outputs} outputs but the order has {order} entries")]
    LengthMismatch {
        /// Number of outputs.
        outputs: usize,
        /// Number of entries in the order.
        order: usize,
    },
    /// The order is not a permutation of `0..len`.
    #[error("cannot restore order: entry {value} at position {position} is out of range or repeated, so the order is not a permutation of 0..{len}")]
    NotAPermutation {
        /// Position of the invalid entry.
        position: usize,
        /// The invalid entry.
        value: usize,
        /// Length of the order.
        len: usize,
    },
}

/// SplitMix64 pseudo-random generator.
///
/// Each call adds the odd constant `0x9E3779B97F4A7C15` to a 64-bit state and returns
/// the state passed through a bijective mixing function. It is fast, has a period of
/// 2^64 and is good enough for shuffling. It is not cryptographically secure.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// Creates a generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Creates a generator for one stream of a seed, such as one epoch.
    ///
    /// The state is a hash of both values. Adding the stream to the seed instead would
    /// make streams overlap, because `new(s + GAMMA)` continues the sequence of `new(s)`.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        Self::new(mix64(seed ^ mix64(stream.wrapping_add(GOLDEN_GAMMA))))
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Returns a uniform integer in `0..bound`, or 0 when `bound` is 0.
    ///
    /// Multiplies 64 random bits by `bound` and keeps the high word, rejecting the few
    /// low words that would bias the result (Lemire's method).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let mut product = u128::from(self.next_u64()) * u128::from(bound);
        if (product as u64) < bound {
            let threshold = bound.wrapping_neg() % bound;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(bound);
            }
        }
        (product >> 64) as u64
    }

    /// Shuffles `items` in place with the Fisher-Yates algorithm.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Returns a random permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        self.shuffle(&mut order);
        order
    }
}

/// A corpus of documents that batches can read token ranges from.
pub trait TokenSource {
    /// Returns the number of documents.
    fn n_documents(&self) -> usize;

    /// Returns the number of tokens of document `doc` (`doc < n_documents()`).
    fn document_len(&self, doc: usize) -> usize;

    /// Appends tokens `[start, end)` of document `doc` to `out`.
    ///
    /// Callers pass `doc < n_documents()` and `start <= end <= document_len(doc)`.
    fn extend_from_document(&self, doc: usize, start: usize, end: usize, out: &mut Vec<u32>);
}

impl TokenSource for TokenFile {
    fn n_documents(&self) -> usize {
        TokenFile::n_documents(self)
    }

    fn document_len(&self, doc: usize) -> usize {
        TokenFile::document_len(self, doc).unwrap_or(0)
    }

    fn extend_from_document(&self, doc: usize, start: usize, end: usize, out: &mut Vec<u32>) {
        if let Some(ids) = self.document(doc).and_then(|ids| ids.slice(start, end)) {
            out.extend(ids.iter());
        }
    }
}

impl<T: AsRef<[u32]>> TokenSource for [T] {
    fn n_documents(&self) -> usize {
        self.len()
    }

    fn document_len(&self, doc: usize) -> usize {
        self[doc].as_ref().len()
    }

    fn extend_from_document(&self, doc: usize, start: usize, end: usize, out: &mut Vec<u32>) {
        out.extend_from_slice(&self[doc].as_ref()[start..end]);
    }
}

impl<T: AsRef<[u32]>> TokenSource for Vec<T> {
    fn n_documents(&self) -> usize {
        self.as_slice().n_documents()
    }

    fn document_len(&self, doc: usize) -> usize {
        self.as_slice().document_len(doc)
    }

    fn extend_from_document(&self, doc: usize, start: usize, end: usize, out: &mut Vec<u32>) {
        self.as_slice().extend_from_document(doc, start, end, out);
    }
}

/// Cut of a language-model token stream into rows and windows, with the sizes that
/// fastai 2.8's `LMDataLoader` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmLayout {
    /// Rows per batch.
    pub batch_size: usize,
    /// Tokens per window, except for a shorter last window.
    pub seq_len: usize,
    /// Tokens per row (fastai's `bl`): `(n_tokens - 1) / batch_size`, rounded down.
    pub row_len: usize,
    /// Number of windows, so of batches: `row_len / seq_len`, rounded up.
    pub n_batches: usize,
    /// Length of the last window: `row_len - (n_batches - 1) * seq_len`.
    pub last_len: usize,
}

impl LmLayout {
    /// Computes the layout for a stream of `n_tokens` tokens.
    ///
    /// One token is kept back so that the last target exists, and the tail that does
    /// not fill a whole column (up to `batch_size - 1` tokens) is dropped, as in fastai.
    pub fn new(n_tokens: usize, batch_size: usize, seq_len: usize) -> Result<Self, BatchError> {
        if batch_size == 0 {
            return Err(BatchError::ZeroBatchSize);
        }
        if seq_len == 0 {
            return Err(BatchError::ZeroSeqLen);
        }
        let row_len = n_tokens.saturating_sub(1) / batch_size;
        if row_len == 0 {
            return Err(BatchError::CorpusTooSmall {
                n_tokens,
                batch_size,
            });
        }
        let n_batches = row_len.div_ceil(seq_len);
        Ok(Self {
            batch_size,
            seq_len,
            row_len,
            n_batches,
            last_len: row_len - (n_batches - 1) * seq_len,
        })
    }

    /// Returns the number of stream tokens that inputs cover: `batch_size * row_len`.
    pub fn n_tokens_used(&self) -> usize {
        self.batch_size * self.row_len
    }

    /// Returns the length of window `batch` (`seq_len`, or `last_len` for the last one).
    pub fn window_len(&self, batch: usize) -> usize {
        if batch + 1 == self.n_batches {
            self.last_len
        } else {
            self.seq_len
        }
    }

    /// Returns the stream position of the first input token of `row` in window `batch`.
    pub fn window_start(&self, row: usize, batch: usize) -> usize {
        row * self.row_len + batch * self.seq_len
    }
}

/// Document order of a language-model epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmOrder {
    /// Documents in corpus order.
    Sequential,
    /// Documents in a random order drawn from `seed` and `epoch`.
    Shuffled {
        /// Seed for the whole run.
        seed: u64,
        /// Epoch index, so every epoch gets its own order.
        epoch: u64,
    },
}

/// One language-model batch: inputs and targets as row-major `[batch_size, seq_len]`
/// matrices, where `y[r][t]` is the token that follows `x[r][t]` in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmBatch {
    /// Input ids, `[batch_size, seq_len]` row-major.
    pub x: Vec<u32>,
    /// Target ids, `[batch_size, seq_len]` row-major.
    pub y: Vec<u32>,
    /// Number of rows.
    pub batch_size: usize,
    /// Number of columns of this batch (shorter for the last window).
    pub seq_len: usize,
}

impl LmBatch {
    /// Returns input row `r`.
    pub fn x_row(&self, r: usize) -> &[u32] {
        &self.x[r * self.seq_len..(r + 1) * self.seq_len]
    }

    /// Returns target row `r`.
    pub fn y_row(&self, r: usize) -> &[u32] {
        &self.y[r * self.seq_len..(r + 1) * self.seq_len]
    }
}

/// Language-model batches of one epoch over a corpus.
///
/// Documents are read in place: a batch gathers its windows straight from the source
/// (for a [`TokenFile`], from the memory map). A shuffled order is stored as a
/// permutation of document indices plus the stream start of each document, so the
/// corpus itself is never copied.
pub struct LmBatches<'a, S: TokenSource + ?Sized> {
    source: &'a S,
    layout: LmLayout,
    order: Option<Vec<usize>>,
    /// Stream position where each document (in epoch order) starts, plus the total.
    starts: Vec<usize>,
}

impl<'a, S: TokenSource + ?Sized> LmBatches<'a, S> {
    /// Lays out the batches of one epoch over `source`.
    ///
    /// Each document should already start with `xxbos`, because documents are
    /// concatenated as they are.
    pub fn new(
        source: &'a S,
        batch_size: usize,
        seq_len: usize,
        order: LmOrder,
    ) -> Result<Self, BatchError> {
        let n_documents = source.n_documents();
        let order = match order {
            LmOrder::Sequential => None,
            LmOrder::Shuffled { seed, epoch } => {
                Some(SplitMix64::for_stream(seed, epoch).permutation(n_documents))
            }
        };

        let mut starts = Vec::with_capacity(n_documents + 1);
        let mut position = 0;
        starts.push(position);
        for k in 0..n_documents {
            let doc = order.as_ref().map_or(k, |order| order[k]);
            position += source.document_len(doc);
            starts.push(position);
        }

        let layout = LmLayout::new(position, batch_size, seq_len)?;
        Ok(Self {
            source,
            layout,
            order,
            starts,
        })
    }

    /// Returns the layout of the batches.
    pub fn layout(&self) -> &LmLayout {
        &self.layout
    }

    /// Returns the number of batches in the epoch.
    pub fn n_batches(&self) -> usize {
        self.layout.n_batches
    }

    /// Returns the document order of the epoch, or `None` for corpus order.
    pub fn document_order(&self) -> Option<&[usize]> {
        self.order.as_deref()
    }

    /// Builds batch `batch`, or returns `None` when `batch >= n_batches()`.
    pub fn batch(&self, batch: usize) -> Option<LmBatch> {
        if batch >= self.layout.n_batches {
            return None;
        }
        let batch_size = self.layout.batch_size;
        let seq_len = self.layout.window_len(batch);
        let mut x = Vec::with_capacity(batch_size * seq_len);
        let mut y = Vec::with_capacity(batch_size * seq_len);
        let mut window = Vec::with_capacity(seq_len + 1);
        for row in 0..batch_size {
            window.clear();
            // Input and target together span seq_len + 1 stream tokens.
            self.gather(
                self.layout.window_start(row, batch),
                seq_len + 1,
                &mut window,
            );
            x.extend_from_slice(&window[..seq_len]);
            y.extend_from_slice(&window[1..]);
        }
        Some(LmBatch {
            x,
            y,
            batch_size,
            seq_len,
        })
    }

    /// Returns an iterator over the batches in order.
    pub fn iter(&self) -> impl Iterator<Item = LmBatch> + '_ {
        (0..self.layout.n_batches).filter_map(move |batch| self.batch(batch))
    }

    /// Appends `len` stream tokens starting at stream position `start` to `out`.
    fn gather(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        // Index (in epoch order) of the last document starting at or before `start`.
        // Empty documents share their start with the next one and are skipped.
        let mut k = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        let mut position = start;
        let end = start + len;
        while position < end && k + 1 < self.starts.len() {
            let doc = self.order.as_ref().map_or(k, |order| order[k]);
            let offset = position - self.starts[k];
            let take = (end - position).min(self.starts[k + 1] - position);
            self.source
                .extend_from_document(doc, offset, offset + take, out);
            position += take;
            k += 1;
        }
    }
}

/// Returns document indices sorted by length, longest first; equal lengths keep
/// their corpus order. fastai's `SortedDL` uses this order for validation.
pub fn sorted_order(lengths: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| Reverse(lengths[i]));
    order
}

/// Returns a training order that puts documents of similar length in the same batch,
/// as fastai 2.8's `SortedDL.shuffle_fn` does.
///
/// The steps:
/// 1. shuffle all indices and swap the longest document (the first one on ties) to
///    the front;
/// 2. sort each chunk of `batch_size * 50` indices by length, longest first (stable);
/// 3. cut the result into batches of `batch_size`;
/// 4. shuffle all batches except the first and the last.
///
/// The first batch therefore contains the longest document, so a batch that does not
/// fit in memory fails at the first step. The last batch, possibly shorter than
/// `batch_size`, stays last, so a caller that drops a partial last batch drops it.
pub fn sortish_order(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
) -> Result<Vec<usize>, BatchError> {
    if batch_size == 0 {
        return Err(BatchError::ZeroBatchSize);
    }
    let mut rng = SplitMix64::new(seed);
    let mut order = rng.permutation(lengths.len());
    if order.is_empty() {
        return Ok(order);
    }

    let longest = first_argmax(lengths);
    if let Some(position) = order.iter().position(|&i| i == longest) {
        order.swap(0, position);
    }
    for chunk in order.chunks_mut(batch_size * SORTISH_CHUNK_BATCHES) {
        chunk.sort_by_key(|&i| Reverse(lengths[i]));
    }

    let mut batches: Vec<&[usize]> = order.chunks(batch_size).collect();
    let n_batches = batches.len();
    if n_batches > 2 {
        rng.shuffle(&mut batches[1..n_batches - 1]);
    }
    Ok(batches.concat())
}

fn first_argmax(values: &[usize]) -> usize {
    let mut best = 0;
    for (i, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = i;
        }
    }
    best
}

/// A sequence of token ids that [`pad_batch`] can copy from.
pub trait TokenSequence {
    /// Returns the number of ids.
    fn token_count(&self) -> usize;

    /// Copies the ids into `out`, which has exactly `token_count()` elements.
    fn copy_ids_to(&self, out: &mut [u32]);
}

impl TokenSequence for [u32] {
    fn token_count(&self) -> usize {
        self.len()
    }

    fn copy_ids_to(&self, out: &mut [u32]) {
        out.copy_from_slice(self);
    }
}

impl TokenSequence for Vec<u32> {
    fn token_count(&self) -> usize {
        self.len()
    }

    fn copy_ids_to(&self, out: &mut [u32]) {
        out.copy_from_slice(self);
    }
}

impl TokenSequence for TokenSlice<'_> {
    fn token_count(&self) -> usize {
        self.len()
    }

    fn copy_ids_to(&self, out: &mut [u32]) {
        self.copy_to(out);
    }
}

impl<T: TokenSequence + ?Sized> TokenSequence for &T {
    fn token_count(&self) -> usize {
        (**self).token_count()
    }

    fn copy_ids_to(&self, out: &mut [u32]) {
        (**self).copy_ids_to(out);
    }
}

/// A batch of documents padded to a common length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    /// Token ids, `[batch_size, max_len]` row-major.
    pub ids: Vec<u32>,
    /// Number of rows.
    pub batch_size: usize,
    /// Number of columns: the length of the longest document.
    pub max_len: usize,
    /// Unpadded length of each document, `[batch_size]`.
    pub lengths: Vec<usize>,
}

impl PaddedBatch {
    /// Returns row `r`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[r * self.max_len..(r + 1) * self.max_len]
    }
}

/// Pads `docs` with `pad_id` to a `[docs.len(), max_len]` matrix.
///
/// With `pad_first` the padding goes before the tokens (left padding), else after.
/// fastai's classifier pads with id 1 (`xxpad`), and [`PAD_ID`] names that value.
pub fn pad_batch<T: TokenSequence>(docs: &[T], pad_id: u32, pad_first: bool) -> PaddedBatch {
    let lengths: Vec<usize> = docs.iter().map(TokenSequence::token_count).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let mut ids = vec![pad_id; docs.len() * max_len];
    for (r, doc) in docs.iter().enumerate() {
        let row = &mut ids[r * max_len..(r + 1) * max_len];
        let len = lengths[r];
        let tokens = if pad_first {
            &mut row[max_len - len..]
        } else {
            &mut row[..len]
        };
        doc.copy_ids_to(tokens);
    }
    PaddedBatch {
        ids,
        batch_size: docs.len(),
        max_len,
        lengths,
    }
}

/// Pads `docs` to a `[docs.len(), max_len]` matrix as fastai 2.8's `pad_chunk` does.
///
/// fastai's `TextBlock` pads classifier batches this way (`Pad_Chunk` with pad id 1,
/// `pad_first` true and `seq_len` 72).
///
/// A row short of `p` tokens gets `(p / seq_len) * seq_len` pad ids on the side given
/// by `pad_first`, and the remaining `p % seq_len` pad ids always after the tokens.
/// Whole `seq_len` chunks of padding can then be skipped by an encoder that reads the
/// document `seq_len` tokens at a time. With `pad_first` and a difference shorter than
/// `seq_len`, all padding therefore goes after the tokens.
pub fn pad_batch_chunked<T: TokenSequence>(
    docs: &[T],
    pad_id: u32,
    pad_first: bool,
    seq_len: usize,
) -> Result<PaddedBatch, BatchError> {
    if seq_len == 0 {
        return Err(BatchError::ZeroSeqLen);
    }
    let lengths: Vec<usize> = docs.iter().map(TokenSequence::token_count).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let mut ids = vec![pad_id; docs.len() * max_len];
    for (r, doc) in docs.iter().enumerate() {
        let row = &mut ids[r * max_len..(r + 1) * max_len];
        let len = lengths[r];
        let chunk_padding = (max_len - len) / seq_len * seq_len;
        let start = if pad_first { chunk_padding } else { 0 };
        doc.copy_ids_to(&mut row[start..start + len]);
    }
    Ok(PaddedBatch {
        ids,
        batch_size: docs.len(),
        max_len,
        lengths,
    })
}

/// Puts outputs computed in `order` back in corpus order.
///
/// `outputs[k]` belongs to document `order[k]`; the result has the output of document
/// `i` at index `i`. `order` must be a permutation of `0..outputs.len()`, such as one
/// returned by [`sorted_order`] or [`sortish_order`].
pub fn restore_order<T>(outputs: Vec<T>, order: &[usize]) -> Result<Vec<T>, BatchError> {
    if outputs.len() != order.len() {
        return Err(BatchError::LengthMismatch {
            outputs: outputs.len(),
            order: order.len(),
        });
    }
    let len = order.len();
    let mut restored: Vec<Option<T>> = (0..len).map(|_| None).collect();
    for (position, (output, &value)) in outputs.into_iter().zip(order).enumerate() {
        match restored.get_mut(value) {
            Some(slot @ None) => *slot = Some(output),
            _ => {
                return Err(BatchError::NotAPermutation {
                    position,
                    value,
                    len,
                })
            }
        }
    }
    // Every slot is filled: `len` distinct in-range values were placed.
    Ok(restored.into_iter().flatten().collect())
}
