//! Delivery tags: which ones a channel has taken in (so a multiple-ack never covers one still
//! on its way), and the lease tokens made of a channel generation and a tag.

/// The delivery tags taken in on one channel: every tag up to `contiguous`, plus `ahead`.
/// Tags start at 1 on each channel.
#[derive(Default, Debug)]
pub(crate) struct SeenTags {
    contiguous: u64,
    ahead: std::collections::BTreeSet<u64>,
}

impl SeenTags {
    /// Records that `tag` was taken in.
    pub(crate) fn mark(&mut self, tag: u64) {
        if tag <= self.contiguous {
            return;
        }
        self.ahead.insert(tag);
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }

    /// Every tag up to this one has been taken in.
    pub(crate) fn contiguous(&self) -> u64 {
        self.contiguous
    }
}

/// How many of `tags` (sorted) one multiple-ack may cover: those below every tag still held
/// and none above a tag not yet taken in.
pub(crate) fn multi_ack_len(tags: &[u64], lowest_held: u64, seen_upto: u64) -> usize {
    let limit = lowest_held.min(seen_upto.saturating_add(1));
    tags.partition_point(|t| *t < limit)
}

/// Lease tokens: the channel generation above bit 40, the delivery tag below.
const TAG_BITS: u32 = 40;

pub(crate) fn token(gen: u32, tag: u64) -> u64 {
    (u64::from(gen) << TAG_BITS) | (tag & ((1 << TAG_BITS) - 1))
}

pub(crate) fn untoken(token: u64) -> (u32, u64) {
    ((token >> TAG_BITS) as u32, token & ((1 << TAG_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tags_advance_only_over_gaps_filled() {
        let mut s = SeenTags::default();
        s.mark(2);
        assert_eq!(s.contiguous(), 0, "tag 1 is still on its way");
        s.mark(1);
        assert_eq!(s.contiguous(), 2);
        s.mark(4);
        s.mark(5);
        assert_eq!(s.contiguous(), 2);
        s.mark(3);
        assert_eq!(s.contiguous(), 5);
        s.mark(2); // a repeat changes nothing
        assert_eq!(s.contiguous(), 5);
    }

    #[test]
    fn a_multiple_ack_never_covers_a_tag_not_taken_in() {
        // Settled 1, 2, 5; nothing else held; tags 3 and 4 not yet taken in (the other
        // consumer's stream): only 1 and 2 go in the multiple-ack, 5 alone.
        assert_eq!(multi_ack_len(&[1, 2, 5], u64::MAX, 2), 2);
        // Everything taken in and nothing held below: all three at once.
        assert_eq!(multi_ack_len(&[1, 2, 5], u64::MAX, 5), 3);
        // Tag 3 held (running): the multiple-ack stops below it.
        assert_eq!(multi_ack_len(&[1, 2, 5], 3, 9), 2);
        assert_eq!(multi_ack_len(&[], 3, 9), 0);
    }
}
