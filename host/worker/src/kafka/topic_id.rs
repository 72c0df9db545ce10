//! A topic's id: Kafka's name for one incarnation of a topic (KIP-516). A topic that is
//! deleted and created again keeps its name and gets a new id, so a stored position is
//! checked against the id it was written under. rdkafka has no safe binding for the
//! DescribeTopics admin call that returns it, so this module makes that one call through
//! librdkafka's C API. (librdkafka's mock cluster, weir's embedded broker, answers no
//! DescribeTopics: it names no controller. It gets a new cluster id each time it starts,
//! which is what identifies its logs.)
#![allow(unsafe_code)]

use rdkafka::bindings as rdsys;
use rdkafka::client::{Client, ClientContext};
use std::ffi::{CStr, CString, c_char, c_int};
use std::time::Duration;

/// The id of `topic` in base64 (as Kafka's tools print it), `Ok(None)` when the broker does
/// not give topics ids, or the broker's error.
pub fn topic_id<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let name = CString::new(topic).map_err(|_| format!("topic name {topic:?} has a NUL"))?;
    let mut names: [*const c_char; 1] = [name.as_ptr()];
    let timeout_ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: `client.native_ptr()` is a live handle for as long as `client` is borrowed.
    // The collection copies the names; the queue, the event and the collection are each
    // destroyed exactly once below, after the last read of anything they own (the topic
    // descriptions and the uuid string belong to the event, and are copied out before it is
    // destroyed).
    unsafe {
        let rk = client.native_ptr();
        let collection = rdsys::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1);
        let queue = rdsys::rd_kafka_queue_new(rk);
        rdsys::rd_kafka_DescribeTopics(rk, collection, std::ptr::null(), queue);
        let event = rdsys::rd_kafka_queue_poll(queue, timeout_ms);
        let result = if event.is_null() {
            Err(format!(
                "describing topic `{topic}`: no answer within {timeout:?}"
            ))
        } else {
            read_id(event, topic)
        };
        if !event.is_null() {
            rdsys::rd_kafka_event_destroy(event);
        }
        rdsys::rd_kafka_queue_destroy(queue);
        rdsys::rd_kafka_TopicCollection_destroy(collection);
        result
    }
}

/// Reads the topic id out of a DescribeTopics result event.
///
/// # Safety
/// `event` must be a live, non-null event returned for a DescribeTopics request.
unsafe fn read_id(
    event: *mut rdsys::rd_kafka_event_t,
    topic: &str,
) -> Result<Option<String>, String> {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: librdkafka returns NUL-terminated strings owned by the event.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: the caller hands a live DescribeTopics event; every pointer read below is
    // owned by it and checked for null first.
    unsafe {
        if rdsys::rd_kafka_event_error(event)
            != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(format!(
                "describing topic `{topic}`: {}",
                text(rdsys::rd_kafka_event_error_string(event))
            ));
        }
        let result = rdsys::rd_kafka_event_DescribeTopics_result(event);
        if result.is_null() {
            return Err(format!(
                "describing topic `{topic}`: not a DescribeTopics result"
            ));
        }
        let mut count = 0usize;
        let descriptions = rdsys::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() || count == 0 {
            return Err(format!(
                "describing topic `{topic}`: the broker described no topic"
            ));
        }
        let description = *descriptions;
        let error = rdsys::rd_kafka_TopicDescription_error(description);
        if !error.is_null() {
            return Err(format!(
                "describing topic `{topic}`: {}",
                text(rdsys::rd_kafka_error_string(error))
            ));
        }
        let id = rdsys::rd_kafka_TopicDescription_topic_id(description);
        if id.is_null()
            || (rdsys::rd_kafka_Uuid_most_significant_bits(id) == 0
                && rdsys::rd_kafka_Uuid_least_significant_bits(id) == 0)
        {
            return Ok(None);
        }
        Ok(Some(text(rdsys::rd_kafka_Uuid_base64str(id))))
    }
}
