//! One Push to a 10,000-member group, measured with a counting allocator: the frame is encoded
//! once and shared, so what each extra recipient costs in heap bytes is bounded (and stated here).

// A test harness: a failed unwrap is a failed test, not a crashed service.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable
)]
// A global allocator is unsafe by definition; this one only counts and forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use im_gateway::metrics::Metrics;
use im_gateway::push::fanout::{fan_out, Targets};
use im_gateway::push::frames::FrameEncoding;
use im_gateway::push::hub::{Hub, SessionHandle};
use im_gateway::push::registry::{Connection, Device};
use im_gateway::push::PushConfig;
use im_proto::im::echo::v1::EchoReply;
use im_proto::im::gateway::v1::Push;
use prost::Message;
use prost_reflect::DescriptorPool;

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap bytes each recipient beyond the first may cost: the frame is shared by reference count;
/// what remains is the recipient's queue growing from empty (a `VecDeque` of 4 slots, 40 bytes
/// each, on a session's first frame: 160 B measured; freed once written).
const MAX_BYTES_PER_RECIPIENT: usize = 192;
const GROUP: usize = 10_000;

#[test]
fn one_push_to_10k_members_allocates_a_bounded_amount_per_recipient() {
    let config = PushConfig::default();
    let hub = Hub::new(&config, 1_000, Arc::new(Metrics::new()));
    let mut queues = Vec::with_capacity(GROUP);
    let users: Vec<String> = (0..GROUP).map(|i| format!("user-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        let (handle, outbox, close_rx) = SessionHandle::new(
            i as u64,
            None,
            u64::MAX,
            FrameEncoding::Proto,
            config.queue_frames,
            config.queue_bytes.0 as usize,
            hub.budget.clone(),
        );
        queues.push((handle.clone(), outbox, close_rx));
        let device = Device {
            device_id: "phone".into(),
            platform: "ios".into(),
        };
        let conn = Connection {
            conn_id: i as u64,
            device,
            handle,
        };
        assert!(hub.registry.register(user, conn).is_empty());
    }
    let pool = DescriptorPool::decode(im_proto::DESCRIPTOR_SET).unwrap();
    let push = Push {
        id: "p1".into(),
        kind: "chat_message_notify".into(),
        payload_type: "im.echo.v1.EchoReply".into(),
        payload: EchoReply {
            text: "x".repeat(1_000),
            ..Default::default()
        }
        .encode_to_vec(),
        ts: 1,
    };
    let targets = Targets {
        platforms: &[],
        exclude_device_ids: &[],
        newer_than: 0,
    };

    let measure = |users: &[String]| {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let reply = fan_out(&hub, &push, users, &targets, &pool).unwrap();
        (ALLOCATED.load(Ordering::Relaxed) - before, reply)
    };
    // One recipient: the encoded frame plus fixed costs.
    let (one, reply) = measure(&users[..1]);
    assert_eq!(reply.delivered, 1);
    // The other 9,999.
    let (all, reply) = measure(&users[1..]);
    assert_eq!(reply.delivered as usize, GROUP - 1);
    assert_eq!(reply.users_online as usize, GROUP - 1);
    let per_recipient = all.saturating_sub(one) / (GROUP - 1);
    println!(
        "one recipient: {one} B (frame {} B); 9,999 more: {all} B -> {per_recipient} B per recipient",
        push.encoded_len()
    );
    assert!(
        per_recipient <= MAX_BYTES_PER_RECIPIENT,
        "{per_recipient} B per recipient > {MAX_BYTES_PER_RECIPIENT} B"
    );
    // Every queue holds the frame.
    for (handle, _, _) in &queues {
        assert_eq!(handle.queued_frames(), 1);
    }
}
