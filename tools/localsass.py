#!/usr/bin/env python3
"""SASS of the decode GEMM (moe_gemm_dec) with this machine's nvcc (sm_90, no GPU needed): the
instructions of each inner loop (one per instantiation), and an opcode histogram of one of them.
The fatbin is built by a newer nvcc on the GPU machine, whose code is somewhat better, so the
counts here are for comparing versions of the source, not for absolute numbers. The FP8 tiled
kernel (mma.sync e4m3 needs nvcc >= 12.4) is left out. Usage:
    python3 tools/localsass.py [REF]   # REF: a git ref; the working tree by default
With PTXAS set (a newer ptxas, tools/localptxas.sh), the PTX is assembled by it: needed since
the kernels use cp.async.bulk.prefetch, which this nvcc's own ptxas does not know. KERNEL names
the decode kernel to read (moe_gemm_dec, moe_gemm_dec1, ...); the first one in the cubin by default.
DUMP names a file for the whole SASS (to diff two versions)."""
import bisect, collections, os, re, subprocess, sys, tempfile

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ref = sys.argv[1] if len(sys.argv) > 1 else None
d = tempfile.mkdtemp()
for f in ("common.cuh", "gemm_fp8fp4.cu"):
    path = "cudaops/kernels/" + f
    src = subprocess.run(["git", "-C", root, "show", f"{ref}:{path}"], capture_output=True, text=True, check=True).stdout if ref \
        else open(os.path.join(root, path)).read()
    if f == "gemm_fp8fp4.cu":
        a = src.index('extern "C" __global__ void __launch_bounds__(GEMM_WARPS * 32)')
        b = src.index("// The streaming variant")
        src = src[:a] + src[b:]
    open(os.path.join(d, f), "w").write(src)
cubin = os.path.join(d, "g.cubin")
ptxas = os.environ.get("PTXAS")
if ptxas:
    # A newer ptxas (tools/localptxas.sh says where to get one) for the instructions this nvcc's
    # ptxas lacks (cp.async.bulk.prefetch): the local PTX with its version raised.
    ptx = os.path.join(d, "g.ptx")
    r = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-std=c++17", "-O3", "-o", ptx, os.path.join(d, "gemm_fp8fp4.cu")],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    text = re.sub(r"^\.version .*$", ".version 8.4", open(ptx).read(), count=1, flags=re.M)
    open(ptx, "w").write(text)
    r = subprocess.run([ptxas, "-arch=sm_90", "-O3", "-v", "-o", cubin, ptx], capture_output=True, text=True)
else:
    r = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", "-O3", "-Xptxas", "-v", "-o", cubin,
                        os.path.join(d, "gemm_fp8fp4.cu")], capture_output=True, text=True)
if r.returncode:
    sys.exit(r.stderr)
print("\n".join(l for l in r.stderr.splitlines() if "registers" in l or "spill" in l))
sass = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
if os.environ.get("DUMP"):
    # DUMP=path: the whole SASS as well, to compare two versions of the source instruction by
    # instruction (a refactoring that should not change the code: diff the two dumps).
    open(os.environ["DUMP"], "w").write(sass)
ins = []  # the decode kernels' instructions (addresses restart in every function)
keep = False
for l in sass.splitlines():
    f = re.search(r"Function : (\S+)", l)
    if f:
        keep = f.group(1) == os.environ["KERNEL"] if os.environ.get("KERNEL") else "gemm_dec" in f.group(1)
        if ins and keep:
            break  # the first decode kernel only
        continue
    m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", l)
    if m and keep:
        ins.append((int(m.group(1), 16), m.group(2).strip()))
# A branch target's index: the first listed instruction at or after it (cuobjdump sometimes prints
# an instruction's encoding without its text, so the target itself may be missing).
addrs = [a for a, _ in ins]
loops = []
for i, (a, t) in enumerate(ins):
    m = re.search(r"BRA (0x[0-9a-f]+)", t)
    if m and int(m.group(1), 16) < a:
        j = bisect.bisect_left(addrs, int(m.group(1), 16))
        seg = ins[j:i + 1]
        mma = sum("HMMA" in x[1] for x in seg)
        if mma:
            loops.append((j, i, mma))
# innermost loops: those containing no other loop
inner = [l for l in loops if not any(o != l and l[0] <= o[0] and o[1] <= l[1] for o in loops)]
for s, e, mma in inner:
    n = e - s + 1
    print(f"loop at {ins[s][0]:#x}: {n} instructions, {mma} HMMA, {8 * n / mma:.0f} per 128-column group")
if inner:
    s, e, mma = min(inner, key=lambda l: (l[1] - l[0] + 1) / l[2])
    ops = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0] for _, t in ins[s:e + 1])
    print("leanest:", ", ".join(f"{k} {v}" for k, v in ops.most_common()))
