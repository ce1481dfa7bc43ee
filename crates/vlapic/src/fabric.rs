//! Interrupt fabric: IPI and MSI routing across many vCPUs. Work in progress.
