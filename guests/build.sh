#!/usr/bin/env bash
# Builds the bare-metal test guests into target/guests/<name>.elf.
#
# Two ways, picked automatically (GUEST_BUILD_MODE=auto, the default):
#   none: target x86_64-unknown-none (soft-float, no SSE, no red zone) if
#         its standard library is installed (`rustup target add
#         x86_64-unknown-none`; this script tries that once, unless
#         GUEST_NO_RUSTUP=1).
#   host: fallback with only the host toolchain: no_std for
#         x86_64-unknown-linux-gnu, static relocation model, SSE disabled,
#         no red zone, linked by gcc with -nostartfiles -nostdlib -static
#         and guests/link.ld. rustc warns that disabling SSE on this target
#         is unstable ABI-wise; guests pass no floats so this is harmless.
# Force one with GUEST_BUILD_MODE=none|host. Either way every binary is
# checked for SSE/AVX instructions (objdump), which the emulated CPL0 path
# of this project's KVM may not handle.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="${GUEST_OUT_DIR:-$ROOT/target/guests}"
BUILD_DIR="${GUEST_BUILD_DIR:-$ROOT/target/guests-build}"
MODE="${GUEST_BUILD_MODE:-auto}"
PROFILE=release
GUESTS=(hello smp exitcost conf_basic conf_timer conf_ipi conf_ioapic bench abuse migrate)

have_none_target() {
    [ -d "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-none/lib" ]
}

if [ "$MODE" = auto ]; then
    if have_none_target; then
        MODE=none
    elif [ "${GUEST_NO_RUSTUP:-0}" != 1 ] && command -v rustup >/dev/null \
        && timeout 120 rustup target add x86_64-unknown-none >/dev/null 2>&1 && have_none_target; then
        MODE=none
    else
        MODE=host
    fi
fi

COMMON="-C relocation-model=static -C no-redzone=yes -C link-arg=-T$HERE/link.ld"
case "$MODE" in
    none)
        TARGET=x86_64-unknown-none
        export RUSTFLAGS="$COMMON"
        ;;
    host)
        TARGET=x86_64-unknown-linux-gnu
        export RUSTFLAGS="$COMMON --cfg guest_fallback -C target-feature=-sse,-sse2,-sse3,-ssse3,-sse4.1,-sse4.2,-avx,-avx2 -C linker=gcc -C link-arg=-nostartfiles -C link-arg=-nostdlib -C link-arg=-static -C link-arg=-no-pie -C link-arg=-Wl,--build-id=none -C link-arg=-Wl,--no-dynamic-linker"
        ;;
    *)
        echo "build.sh: GUEST_BUILD_MODE must be auto, none or host" >&2
        exit 2
        ;;
esac
unset CARGO_ENCODED_RUSTFLAGS

echo "build.sh: building guests for $TARGET (mode $MODE)" >&2
cargo build --manifest-path "$HERE/Cargo.toml" --target "$TARGET" --target-dir "$BUILD_DIR" \
    --profile "$PROFILE" --bins ${GUEST_CARGO_FLAGS:-}

mkdir -p "$OUT"
for g in "${GUESTS[@]}"; do
    src="$BUILD_DIR/$TARGET/$PROFILE/$g"
    dst="$OUT/$g.elf"
    cp "$src" "$dst"
    if command -v objdump >/dev/null; then
        if objdump -d "$dst" | grep -Eq '%[xy]mm[0-9]'; then
            echo "build.sh: $dst contains SSE/AVX instructions:" >&2
            objdump -d "$dst" | grep -E '%[xy]mm[0-9]' | head -5 >&2
            exit 1
        fi
    else
        echo "build.sh: objdump not found, SSE check skipped" >&2
    fi
    echo "$dst"
done
echo "$MODE" > "$OUT/.build-mode"
