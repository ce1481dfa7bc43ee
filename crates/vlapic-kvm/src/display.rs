//! `Display` for [`KvmLapic`]: one line per register, raw value then the
//! decoded fields.

use core::fmt;

use vlapic::regs::{esr, LvtEntry, TimerMode};
use vlapic::{DeliveryMode, Lvt, Register, Shorthand, VectorSet};

use crate::view::KvmLapic;

/// SDM spelling of a delivery mode.
pub(crate) fn mode_name(m: DeliveryMode) -> &'static str {
    match m {
        DeliveryMode::Fixed => "Fixed",
        DeliveryMode::LowestPriority => "LowPri",
        DeliveryMode::Smi => "SMI",
        DeliveryMode::Reserved3 => "Reserved(011)",
        DeliveryMode::Nmi => "NMI",
        DeliveryMode::Init => "INIT",
        DeliveryMode::StartUp => "StartUp",
        DeliveryMode::ExtInt => "ExtINT",
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn lvt_name(l: Lvt) -> &'static str {
    match l {
        Lvt::Cmci => "LVT CMCI",
        Lvt::Timer => "LVT TIMER",
        Lvt::Thermal => "LVT THERMAL",
        Lvt::Perfmon => "LVT PERFMON",
        Lvt::Lint0 => "LVT LINT0",
        Lvt::Lint1 => "LVT LINT1",
        Lvt::Error => "LVT ERROR",
    }
}

fn write_lvt(f: &mut fmt::Formatter<'_>, l: Lvt, e: LvtEntry) -> fmt::Result {
    write!(
        f,
        "{:<11} 0x{:08x}  vector=0x{:02x}",
        lvt_name(l),
        e.into_bits(),
        e.vector()
    )?;
    if !matches!(l, Lvt::Timer | Lvt::Error) {
        write!(f, " mode={}", mode_name(e.delivery_mode()))?;
    }
    write!(f, " masked={}", yes(e.masked()))?;
    match l {
        Lvt::Timer => {
            let m = match e.timer_mode() {
                TimerMode::OneShot => "one-shot",
                TimerMode::Periodic => "periodic",
                TimerMode::TscDeadline => "tsc-deadline",
                TimerMode::Reserved => "reserved(11)",
            };
            write!(f, " timer={m}")?;
        }
        Lvt::Lint0 | Lvt::Lint1 => {
            write!(
                f,
                " trigger={} polarity={} remote_irr={}",
                if e.level_triggered() { "level" } else { "edge" },
                if e.active_low() { "low" } else { "high" },
                e.remote_irr()
            )?;
        }
        _ => {}
    }
    if e.delivery_pending() {
        f.write_str(" delivery=pending")?;
    }
    Ok(())
}

fn write_vectors(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    base: fn(u8) -> Register,
    s: VectorSet,
) -> fmt::Result {
    write!(f, "{:<11} 0x{:03x}       vectors=[", name, base(0).offset())?;
    for (i, v) in s.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "0x{v:02x}")?;
    }
    f.write_str("]")
}

const ESR_NAMES: [&str; 8] = [
    "send-checksum",
    "recv-checksum",
    "send-accept",
    "recv-accept",
    "redirectable-ipi",
    "send-illegal-vector",
    "recv-illegal-vector",
    "illegal-register",
];

impl fmt::Display for KvmLapic {
    /// One line per register of the map, in address order:
    ///
    /// ```
    /// use vlapic::Register;
    /// let mut k = vlapic_kvm::KvmLapic::new();
    /// k.write(Register::LvtLint0, 0x700);
    /// let text = k.to_string();
    /// assert!(text.lines().any(|l| l
    ///     == "LVT LINT0   0x00000700  vector=0x00 mode=ExtINT masked=no \
    ///         trigger=edge polarity=high remote_irr=false"));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.read(Register::Id);
        writeln!(
            f,
            "{:<11} 0x{id:08x}  xapic_id=0x{:02x} x2apic_id(full32)=0x{id:x} x2apic_id(legacy)=0x{:02x}",
            "ID",
            id >> 24,
            id >> 24
        )?;
        let v = self.version();
        writeln!(
            f,
            "{:<11} 0x{v:08x}  version=0x{:02x} max_lvt={} suppress_eoi_broadcast={}",
            "VERSION",
            v & 0xFF,
            (v >> 16) & 0xFF,
            yes(v & (1 << 24) != 0)
        )?;
        for (name, reg) in [
            ("TPR", Register::Tpr),
            ("APR", Register::Apr),
            ("PPR", Register::Ppr),
        ] {
            let r = self.read(reg);
            writeln!(
                f,
                "{name:<11} 0x{r:08x}  class={} subclass={}",
                (r >> 4) & 0xF,
                r & 0xF
            )?;
        }
        let ldr = self.ldr();
        writeln!(
            f,
            "{:<11} 0x{ldr:08x}  xapic_logical_id=0x{:02x} x2apic_cluster=0x{:x} x2apic_mask=0x{:04x}",
            "LDR",
            ldr >> 24,
            ldr >> 16,
            ldr & 0xFFFF
        )?;
        let dfr = self.dfr();
        let model = match dfr >> 28 {
            0xF => "flat",
            0x0 => "cluster",
            _ => "reserved",
        };
        writeln!(f, "{:<11} 0x{dfr:08x}  model={model}", "DFR")?;
        let svr = self.svr();
        writeln!(
            f,
            "{:<11} 0x{:08x}  vector=0x{:02x} enabled={} focus_check={} suppress_eoi_broadcast={}",
            "SVR",
            svr.into_bits(),
            svr.vector(),
            yes(svr.software_enabled()),
            if svr.focus_check_disabled() {
                "off"
            } else {
                "on"
            },
            yes(svr.suppress_eoi_broadcast())
        )?;
        write_vectors(f, "ISR", Register::Isr, self.isr())?;
        writeln!(f)?;
        write_vectors(f, "TMR", Register::Tmr, self.tmr())?;
        writeln!(f)?;
        write_vectors(f, "IRR", Register::Irr, self.irr())?;
        writeln!(f)?;
        let e = self.esr();
        write!(f, "{:<11} 0x{e:08x}  errors=[", "ESR")?;
        let mut first = true;
        for (bit, name) in ESR_NAMES.iter().enumerate() {
            if e & (1 << bit) != 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                f.write_str(name)?;
            }
        }
        if e & !esr::VALID != 0 {
            write!(
                f,
                "{}reserved=0x{:x}",
                if first { "" } else { "," },
                e & !esr::VALID
            )?;
        }
        writeln!(f, "]")?;
        write_lvt(f, Lvt::Cmci, self.lvt_cmci())?;
        writeln!(f)?;
        let icr = self.icr();
        writeln!(
            f,
            "{:<11} 0x{:08x}_{:08x}  vector=0x{:02x} mode={} dest_mode={} level={} trigger={} shorthand={} dest=0x{:x} (xapic 0x{:02x})",
            "ICR",
            icr.into_bits() >> 32,
            icr.into_bits() as u32,
            icr.vector(),
            mode_name(icr.delivery_mode()),
            if icr.logical() { "logical" } else { "physical" },
            if icr.assert() { "assert" } else { "deassert" },
            if icr.level_triggered() { "level" } else { "edge" },
            match icr.shorthand() {
                Shorthand::None => "none",
                Shorthand::SelfOnly => "self",
                Shorthand::AllIncludingSelf => "all",
                Shorthand::AllExcludingSelf => "all-but-self",
            },
            icr.destination(),
            icr.xapic_destination()
        )?;
        for l in [
            Lvt::Timer,
            Lvt::Thermal,
            Lvt::Perfmon,
            Lvt::Lint0,
            Lvt::Lint1,
            Lvt::Error,
        ] {
            write_lvt(f, l, self.lvt(l))?;
            writeln!(f)?;
        }
        let tmict = self.timer_initial_count();
        writeln!(f, "{:<11} 0x{tmict:08x}  count={tmict}", "TMICT")?;
        let tmcct = self.timer_current_count();
        writeln!(f, "{:<11} 0x{tmcct:08x}  count={tmcct}", "TMCCT")?;
        let tdcr = self.read(Register::TimerDivide);
        write!(
            f,
            "{:<11} 0x{tdcr:08x}  divisor={}",
            "TDCR",
            self.timer_divide().divisor()
        )?;
        let stray: Vec<_> = self.stray_words().collect();
        if !stray.is_empty() {
            writeln!(f)?;
            f.write_str("OTHER      ")?;
            for (off, v) in stray {
                write!(f, " [0x{off:03x}]=0x{v:08x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_register() {
        let k = KvmLapic::new();
        let s = k.to_string();
        // ID VERSION TPR APR PPR LDR DFR SVR ISR TMR IRR ESR CMCI ICR
        // 6 LVTs TMICT TMCCT TDCR
        assert_eq!(s.lines().count(), 23, "{s}");
        assert!(s.lines().next().unwrap().starts_with("ID "));
        assert!(s.lines().last().unwrap().starts_with("TDCR "));
    }

    #[test]
    fn decodes_fields() {
        let mut k = KvmLapic::new();
        k.write(Register::Id, 0x0300_0000);
        k.write(Register::Version, 0x0005_0014);
        k.write(Register::Dfr, 0xFFFF_FFFF);
        k.write(Register::Svr, 0x1FF);
        k.write(Register::Esr, 0x60);
        k.write(Register::LvtTimer, 0x0002_00EC);
        k.write(Register::LvtLint1, 0x0000_A400);
        k.write(Register::IcrLow, 0x0000_4500);
        k.write(Register::IcrHigh, 0x0200_0000);
        k.write(Register::Irr(1), 0b11);
        k.write(Register::TimerDivide, 0b1011);
        k.set_word(0x304, 0x0200_0000);
        let s = k.to_string();
        let has = |needle: &str| assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        has("ID          0x03000000  xapic_id=0x03");
        has("max_lvt=5");
        has("DFR         0xffffffff  model=flat");
        has("SVR         0x000001ff  vector=0xff enabled=yes");
        has("errors=[send-illegal-vector,recv-illegal-vector]");
        has("LVT TIMER   0x000200ec  vector=0xec masked=no timer=periodic");
        has("LVT LINT1   0x0000a400  vector=0x00 mode=NMI masked=no trigger=level polarity=low");
        has("mode=INIT dest_mode=physical level=assert trigger=edge shorthand=none dest=0x2000000 (xapic 0x02)");
        has("IRR         0x200       vectors=[0x20,0x21]");
        has("TDCR        0x0000000b  divisor=1");
        has("OTHER       [0x304]=0x02000000");
    }
}
