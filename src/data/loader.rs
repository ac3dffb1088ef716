//! Seeded batching. An epoch forks its own generator from the caller's `Rng`, shuffles the index
//! order with it and draws each image's augmentation from it in order, so one seed reproduces
//! every batch while successive epochs differ.

use super::{AugParams, Augment, Dataset};
use crate::rng::Rng;
use crate::{Error, Result, Tensor};

/// One batch: normalised images `[b, 3, 32, 32]`, their labels, and their indices in the data set.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn into_parts(self) -> (Tensor, Vec<u32>) {
        (self.images, self.labels)
    }
}

/// Batch settings over a borrowed data set.
#[derive(Clone, Debug)]
pub struct DataLoader<'a> {
    data: &'a Dataset,
    batch_size: usize,
    shuffle: bool,
    drop_last: bool,
    augment: Option<Augment>,
}

impl<'a> DataLoader<'a> {
    /// In-order batches without augmentation, last partial batch kept.
    pub fn new(data: &'a Dataset, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::invalid("DataLoader::new", "batch size must be at least 1"));
        }
        Ok(DataLoader { data, batch_size, shuffle: false, drop_last: false, augment: None })
    }

    /// Training defaults: shuffled, standard CIFAR augmentation, last partial batch kept.
    pub fn train(data: &'a Dataset, batch_size: usize) -> Result<Self> {
        Ok(DataLoader::new(data, batch_size)?.shuffle(true).augment(Some(Augment::CIFAR)))
    }

    /// Evaluation defaults: in order, no augmentation, every image seen.
    pub fn eval(data: &'a Dataset, batch_size: usize) -> Result<Self> {
        DataLoader::new(data, batch_size)
    }

    pub fn shuffle(mut self, on: bool) -> Self {
        self.shuffle = on;
        self
    }
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    pub fn augment(mut self, augment: Option<Augment>) -> Self {
        self.augment = augment;
        self
    }

    pub fn dataset(&self) -> &'a Dataset {
        self.data
    }
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.data.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// One pass over the data. Always forks exactly one generator from `rng` (shuffled or not), so
    /// the caller's stream advances the same way whatever the settings.
    pub fn epoch(&self, rng: &mut Rng) -> Epoch<'a> {
        let mut rng = rng.fork();
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            rng.shuffle(&mut order);
        }
        Epoch {
            data: self.data,
            order,
            pos: 0,
            batch_size: self.batch_size,
            drop_last: self.drop_last,
            augment: self.augment,
            rng,
        }
    }
}

/// Iterator over one epoch's batches.
#[derive(Clone, Debug)]
pub struct Epoch<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    drop_last: bool,
    augment: Option<Augment>,
    rng: Rng,
}

impl Epoch<'_> {
    /// The epoch's index order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    fn remaining(&self) -> usize {
        let left = self.order.len() - self.pos;
        if self.drop_last {
            left / self.batch_size
        } else {
            left.div_ceil(self.batch_size)
        }
    }
}

impl Iterator for Epoch<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let left = self.order.len() - self.pos;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            return None;
        }
        let b = left.min(self.batch_size);
        let indices = self.order[self.pos..self.pos + b].to_vec();
        self.pos += b;
        // Parameters are drawn here, sequentially, so parallel decoding cannot change them.
        let params: Option<Vec<AugParams>> = self.augment.map(|a| (0..b).map(|_| a.sample(&mut self.rng)).collect());
        let labels = indices.iter().map(|&i| self.data.labels[i]).collect();
        Some(self.data.decode(&indices, params.as_deref()).map(|images| Batch { images, labels, indices }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

impl ExactSizeIterator for Epoch<'_> {}
