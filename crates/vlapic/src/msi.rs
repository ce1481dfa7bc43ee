//! MSI address/data decoding (SDM 11.11 "Message Signalled Interrupts"). Work in progress.
