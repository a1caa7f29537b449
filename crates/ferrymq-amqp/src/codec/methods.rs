//! Every AMQP 0-9-1 method, generated from one table so decode and encode cannot drift.

use super::primitives::{Field, LongStr, Reader, Writer};
use super::CodecError;
use ferrymq_core::FieldTable;

macro_rules! methods {
    ($( $class:literal $method:literal $variant:ident $name:literal { $($field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            #[doc = concat!("`", $name, "` arguments.")]
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $variant { $(#[allow(missing_docs)] pub $field: $ty),* }
            impl From<$variant> for Method {
                fn from(m: $variant) -> Method { Method::$variant(m) }
            }
        )*

        /// A decoded AMQP method with its arguments.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method {
            $(#[doc = concat!("`", $name, "`")] $variant($variant)),*
        }

        impl Method {
            /// The (class id, method id) pair.
            pub fn ids(&self) -> (u16, u16) {
                match self { $(Method::$variant(_) => ($class, $method)),* }
            }

            /// The method's name, e.g. `basic.publish`.
            pub fn name(&self) -> &'static str {
                match self { $(Method::$variant(_) => $name),* }
            }

            /// The name of a method by ids, for error messages about unknown methods.
            pub fn name_of(class: u16, method: u16) -> Option<&'static str> {
                match (class, method) { $(($class, $method) => Some($name),)* _ => None }
            }

            /// Decodes a method frame payload (starting at the class id).
            /// Names must be valid UTF-8 (501 otherwise, as in RabbitMQ), except in
            /// basic.publish, whose exchange and routing key RabbitMQ takes as they come.
            pub fn decode(payload: &[u8]) -> Result<Method, CodecError> {
                let publish = payload.get(..4) == Some(&[0, 60, 0, 40]);
                let mut r = Reader::new(payload).strict_utf8(!publish);
                let class = r.u16()?;
                let method = r.u16()?;
                #[allow(unused_variables, unused_mut)]
                match (class, method) {
                    $(($class, $method) => Ok(Method::$variant($variant {
                        $($field: <$ty as Field>::read(&mut r)?),*
                    })),)*
                    _ => Err(CodecError::UnknownMethod(class, method)),
                }
            }

            /// Appends the method payload (class id, method id, arguments).
            pub fn encode(&self, w: &mut Writer<'_>) {
                match self {
                    $(#[allow(unused_variables)] Method::$variant(m) => {
                        w.u16($class);
                        w.u16($method);
                        $(Field::write(&m.$field, w);)*
                        w.flush_bits();
                    })*
                }
            }
        }
    };
}

methods! {
    10 10 ConnectionStart "connection.start" { version_major: u8, version_minor: u8, server_properties: FieldTable, mechanisms: LongStr, locales: LongStr }
    10 11 ConnectionStartOk "connection.start-ok" { client_properties: FieldTable, mechanism: String, response: LongStr, locale: String }
    10 20 ConnectionSecure "connection.secure" { challenge: LongStr }
    10 21 ConnectionSecureOk "connection.secure-ok" { response: LongStr }
    10 30 ConnectionTune "connection.tune" { channel_max: u16, frame_max: u32, heartbeat: u16 }
    10 31 ConnectionTuneOk "connection.tune-ok" { channel_max: u16, frame_max: u32, heartbeat: u16 }
    10 40 ConnectionOpen "connection.open" { virtual_host: String, capabilities: String, insist: bool }
    10 41 ConnectionOpenOk "connection.open-ok" { known_hosts: String }
    10 50 ConnectionClose "connection.close" { reply_code: u16, reply_text: String, class_id: u16, method_id: u16 }
    10 51 ConnectionCloseOk "connection.close-ok" {}
    10 60 ConnectionBlocked "connection.blocked" { reason: String }
    10 61 ConnectionUnblocked "connection.unblocked" {}
    10 70 ConnectionUpdateSecret "connection.update-secret" { new_secret: LongStr, reason: String }
    10 71 ConnectionUpdateSecretOk "connection.update-secret-ok" {}
    20 10 ChannelOpen "channel.open" { out_of_band: String }
    20 11 ChannelOpenOk "channel.open-ok" { channel_id: LongStr }
    20 20 ChannelFlow "channel.flow" { active: bool }
    20 21 ChannelFlowOk "channel.flow-ok" { active: bool }
    20 40 ChannelClose "channel.close" { reply_code: u16, reply_text: String, class_id: u16, method_id: u16 }
    20 41 ChannelCloseOk "channel.close-ok" {}
    40 10 ExchangeDeclare "exchange.declare" { ticket: u16, exchange: String, kind: String, passive: bool, durable: bool, auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable }
    40 11 ExchangeDeclareOk "exchange.declare-ok" {}
    40 20 ExchangeDelete "exchange.delete" { ticket: u16, exchange: String, if_unused: bool, nowait: bool }
    40 21 ExchangeDeleteOk "exchange.delete-ok" {}
    40 30 ExchangeBind "exchange.bind" { ticket: u16, destination: String, source: String, routing_key: String, nowait: bool, arguments: FieldTable }
    40 31 ExchangeBindOk "exchange.bind-ok" {}
    40 40 ExchangeUnbind "exchange.unbind" { ticket: u16, destination: String, source: String, routing_key: String, nowait: bool, arguments: FieldTable }
    40 51 ExchangeUnbindOk "exchange.unbind-ok" {}
    50 10 QueueDeclare "queue.declare" { ticket: u16, queue: String, passive: bool, durable: bool, exclusive: bool, auto_delete: bool, nowait: bool, arguments: FieldTable }
    50 11 QueueDeclareOk "queue.declare-ok" { queue: String, message_count: u32, consumer_count: u32 }
    50 20 QueueBind "queue.bind" { ticket: u16, queue: String, exchange: String, routing_key: String, nowait: bool, arguments: FieldTable }
    50 21 QueueBindOk "queue.bind-ok" {}
    50 30 QueuePurge "queue.purge" { ticket: u16, queue: String, nowait: bool }
    50 31 QueuePurgeOk "queue.purge-ok" { message_count: u32 }
    50 40 QueueDelete "queue.delete" { ticket: u16, queue: String, if_unused: bool, if_empty: bool, nowait: bool }
    50 41 QueueDeleteOk "queue.delete-ok" { message_count: u32 }
    50 50 QueueUnbind "queue.unbind" { ticket: u16, queue: String, exchange: String, routing_key: String, arguments: FieldTable }
    50 51 QueueUnbindOk "queue.unbind-ok" {}
    60 10 BasicQos "basic.qos" { prefetch_size: u32, prefetch_count: u16, global: bool }
    60 11 BasicQosOk "basic.qos-ok" {}
    60 20 BasicConsume "basic.consume" { ticket: u16, queue: String, consumer_tag: String, no_local: bool, no_ack: bool, exclusive: bool, nowait: bool, arguments: FieldTable }
    60 21 BasicConsumeOk "basic.consume-ok" { consumer_tag: String }
    60 30 BasicCancel "basic.cancel" { consumer_tag: String, nowait: bool }
    60 31 BasicCancelOk "basic.cancel-ok" { consumer_tag: String }
    60 40 BasicPublish "basic.publish" { ticket: u16, exchange: String, routing_key: String, mandatory: bool, immediate: bool }
    60 50 BasicReturn "basic.return" { reply_code: u16, reply_text: String, exchange: String, routing_key: String }
    60 60 BasicDeliver "basic.deliver" { consumer_tag: String, delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String }
    60 70 BasicGet "basic.get" { ticket: u16, queue: String, no_ack: bool }
    60 71 BasicGetOk "basic.get-ok" { delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String, message_count: u32 }
    60 72 BasicGetEmpty "basic.get-empty" { cluster_id: String }
    60 80 BasicAck "basic.ack" { delivery_tag: u64, multiple: bool }
    60 90 BasicReject "basic.reject" { delivery_tag: u64, requeue: bool }
    60 100 BasicRecoverAsync "basic.recover-async" { requeue: bool }
    60 110 BasicRecover "basic.recover" { requeue: bool }
    60 111 BasicRecoverOk "basic.recover-ok" {}
    60 120 BasicNack "basic.nack" { delivery_tag: u64, multiple: bool, requeue: bool }
    85 10 ConfirmSelect "confirm.select" { nowait: bool }
    85 11 ConfirmSelectOk "confirm.select-ok" {}
    90 10 TxSelect "tx.select" {}
    90 11 TxSelectOk "tx.select-ok" {}
    90 20 TxCommit "tx.commit" {}
    90 21 TxCommitOk "tx.commit-ok" {}
    90 30 TxRollback "tx.rollback" {}
    90 31 TxRollbackOk "tx.rollback-ok" {}
}

impl Method {
    /// Whether this method is followed by a content header and body (publish, deliver, ...).
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_)
                | Method::BasicReturn(_)
                | Method::BasicDeliver(_)
                | Method::BasicGetOk(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn roundtrip(m: Method) {
        let mut buf = BytesMut::new();
        m.encode(&mut Writer::new(&mut buf));
        assert_eq!(Method::decode(&buf).unwrap(), m);
    }

    #[test]
    fn methods_roundtrip_with_packed_bits() {
        roundtrip(
            QueueDeclare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: true,
                ..Default::default()
            }
            .into(),
        );
        roundtrip(
            BasicNack {
                delivery_tag: 42,
                multiple: true,
                requeue: false,
            }
            .into(),
        );
        roundtrip(
            BasicDeliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 7,
                redelivered: true,
                exchange: "x".into(),
                routing_key: "rk".into(),
            }
            .into(),
        );
        roundtrip(TxCommit {}.into());
    }

    #[test]
    fn bits_pack_into_one_octet() {
        let m: Method = ExchangeDeclare {
            exchange: "e".into(),
            kind: "direct".into(),
            passive: true,
            durable: false,
            auto_delete: true,
            internal: false,
            nowait: true,
            ..Default::default()
        }
        .into();
        let mut buf = BytesMut::new();
        m.encode(&mut Writer::new(&mut buf));
        // class, method, ticket, "e", "direct", one bits octet, empty table
        assert_eq!(buf.len(), 2 + 2 + 2 + 2 + 7 + 1 + 4);
        assert_eq!(buf[15], 0b10101);
    }

    #[test]
    fn truncated_and_unknown_methods_are_errors() {
        assert!(matches!(
            Method::decode(&[0, 60, 0, 40, 0]),
            Err(CodecError::InsufficientBytes(_))
        ));
        assert_eq!(
            Method::decode(&[0, 99, 0, 1]),
            Err(CodecError::UnknownMethod(99, 1))
        );
    }
}
