// Routing metadata and the permute: per-expert counts, segment offsets aligned to MOE_BM rows,
// the GEMM tile list, expert_ids, row_pair and inv_perm with rows in ascending (t, k) order
// inside each segment, and the gather of input rows and scales into the permuted layout.
#include "common.cuh"

#define ROUTE_THREADS 1024

// Exclusive scan over the block (one value per thread): a shuffle scan inside each warp, the
// warps' totals scanned by warp 0. buf holds at least 32 ints; *total receives the sum.
__device__ __forceinline__ int block_exclusive_scan(int v, int* buf, int* total) {
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) buf[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = buf[lane], wincl = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, wincl, o);
      if (lane >= o) wincl += n;
    }
    buf[lane] = wincl - w;  // exclusive prefix of the warps' totals
    if (lane == 31) buf[32] = wincl;
  }
  __syncthreads();
  const int res = buf[warp] + incl - v;
  *total = buf[32];
  __syncthreads();
  return res;
}

// The local expert of global expert id: -1 for an id of -1, an id without a local expert
// (expert_map holds -1 there), or an invalid id, one outside [-1, Eg), for which *bad is set.
__device__ __forceinline__ int expert_of(int id, const int* expert_map, i64 Eg, bool* bad) {
  *bad = id < -1 || id >= Eg;
  if (*bad || id < 0) return -1;
  return expert_map ? expert_map[id] : id;
}

// The local expert of pair i, -1 when skipped; an invalid id counts in *err when count_err.
__device__ __forceinline__ int local_expert(const int* ids, const int* expert_map, i64 i, i64 Eg, int* err, bool count_err) {
  bool bad;
  const int le = expert_of(ids[i], expert_map, Eg, &bad);
  if (bad && count_err) atomicAdd(err, 1);
  return le;
}

// The rank of a pair among the pairs of its expert le in a chunk of ROUTE_THREADS pairs (one
// per thread): inside a warp by lane (peers, from match), across the warps by the counts of the
// earlier warps, which the warps' leaders left in wcnt[le][w] (one byte each, rows of 36 bytes
// so that the rows of a warp's different experts start in different banks).
__device__ __forceinline__ int chunk_rank(const u8* wcnt, int le, int warp, int rank) {
  const uint32_t* wc = reinterpret_cast<const uint32_t*>(wcnt + le * 36);
  int before = 0;
#pragma unroll
  for (int k = 0; k < 8; k++) {  // bytes of the warps below this one
    const int lo = 4 * k;
    const uint32_t mask = warp >= lo + 4 ? 0xffffffffu : warp <= lo ? 0u : (1u << (8 * (warp - lo))) - 1u;
    before = (int)__dp4a(wc[k] & mask, 0x01010101u, (unsigned)before);
  }
  return before + rank;
}

// Copies token t's FP8 row (K bytes, as K/16 16-byte pieces, with dec in the decode GEMM's byte
// order) and its K/128 scales into permuted row r, over the block's threads.
__device__ __forceinline__ void gather_row(const u8* __restrict__ a1q, const float* __restrict__ a1s, i64 t, i64 r, i64 K,
                                           u8* __restrict__ a1q_perm, float* __restrict__ a1s_perm, bool dec) {
  const uint4* src = reinterpret_cast<const uint4*>(a1q + t * K);
  uint4* dst = reinterpret_cast<uint4*>(a1q_perm + r * K);
  for (i64 j = threadIdx.x; j < K / 16; j += blockDim.x) dst[j] = dec ? dec_order16(src[j]) : src[j];
  const i64 G = K / MOE_GROUP;
  for (i64 g = threadIdx.x; g < G; g += blockDim.x) a1s_perm[r * G + g] = a1s[t * G + g];
}

// The token of permuted row r (blockIdx.x), or -1 for a row past offsets[E] or a padding row,
// whose K/128 scales and K FP8 bytes this block then zeroes.
__device__ __forceinline__ i64 permute_token(const int* __restrict__ row_pair, const int* __restrict__ offsets, i64 E, i64 K,
                                             i64 topk, u8* __restrict__ a1q_perm, float* __restrict__ a1s_perm) {
  const i64 r = blockIdx.x;
  if (r >= offsets[E]) return -1;
  const int pair = row_pair[r];
  if (pair >= 0) return pair / topk;
  uint4* dst = reinterpret_cast<uint4*>(a1q_perm + r * K);
  for (i64 j = threadIdx.x; j < K / 16; j += blockDim.x) dst[j] = make_uint4(0, 0, 0, 0);
  const i64 G = K / MOE_GROUP;
  for (i64 g = threadIdx.x; g < G; g += blockDim.x) a1s_perm[r * G + g] = 0.f;
  return -1;
}

// Records pair i's place: row of local expert le (le >= 0), or no row (le == -1: an id with no
// local expert); le == -2 (no pair: past the end of the chunk) writes nothing.
__device__ __forceinline__ void place_pair(int le, int row, i64 i, int* __restrict__ expert_ids, int* __restrict__ row_pair,
                                           int* __restrict__ inv_perm) {
  if (le >= 0) {
    expert_ids[row] = le;
    row_pair[row] = (int)i;
    inv_perm[i] = row;
  } else if (le == -1) {
    inv_perm[i] = -1;
  }
}

// A tile of at most this many real rows is short: one pass of every decode kernel (8 tokens a pass
// or more), where a longer tile takes two or more passes of the 8-token kernels.
#define ROUTE_SHORT_TILE 8

// An expert's tiles of c real rows: nl long ones (more than ROUTE_SHORT_TILE rows, its first),
// then sh (0 or 1) short one (its last).
__device__ __forceinline__ void expert_tiles(int c, int& nl, int& sh) {
  sh = c % MOE_BM > 0 && c % MOE_BM <= ROUTE_SHORT_TILE;
  nl = (c + MOE_BM - 1) / MOE_BM - sh;
}

// An expert's 8-row chunks on the chunk list: those of its long tiles (nl of them, c real rows).
__device__ __forceinline__ int expert_chunks(int c, int nl) { return (min(c, nl * MOE_BM) + 7) / 8; }

// Writes expert e's entries, (list_word(expert, rows), first row) each, its c real rows from
// off: its nl long tiles at tiles[2·tl ...], its short tile (sh) at tiles[2·(ntl + ts)] (ntl:
// every expert's long tiles); with tiles8, its long tiles' chunks at tiles8[2·tc ...] and its
// short tile at tiles8[2·(nch + ts)] (nch: every expert's chunks); with tilesh (moe_route's heavy
// list), two entries a long tile at tilesh[4·(tl + j) ...] (the halves of a tile of more than 16
// rows, flagged DEC_HEAVY_ROW, or its two 8-row chunks) and its short tile at
// tilesh[2·(2·ntl + ts)].
__device__ __forceinline__ void list_expert(int e, int off, int c, int nl, int sh, int tl, int ntl, int ts,
                                            int* __restrict__ tiles, int* __restrict__ tiles8, int tc, int nch,
                                            int* __restrict__ tilesh = nullptr) {
  for (int j = 0; j < nl; j++) {
    tiles[2 * (tl + j)] = list_word(e, min(MOE_BM, c - j * MOE_BM));
    tiles[2 * (tl + j) + 1] = off + j * MOE_BM;
  }
  const int srows = c - nl * MOE_BM;  // the short tile's
  if (sh) {
    tiles[2 * (ntl + ts)] = list_word(e, srows);
    tiles[2 * (ntl + ts) + 1] = off + nl * MOE_BM;
  }
  if (tilesh) {
    for (int j = 0; j < nl; j++) {
      const int r0 = off + j * MOE_BM, r = c - j * MOE_BM;
      const bool heavy = r > 16;
      for (int h = 0; h < 2; h++) {
        tilesh[4 * (tl + j) + 2 * h] = list_word(e, heavy ? min(MOE_BM, r) : min(8, r - 8 * h));
        tilesh[4 * (tl + j) + 2 * h + 1] = heavy ? r0 | DEC_HEAVY_ROW | h << DEC_HALF_SHIFT : r0 + 8 * h;
      }
    }
    if (sh) {
      tilesh[2 * (2 * ntl + ts)] = list_word(e, srows);
      tilesh[2 * (2 * ntl + ts) + 1] = off + nl * MOE_BM;
    }
  }
  if (!tiles8) return;
  const int n = expert_chunks(c, nl);
  for (int j = 0; j < n; j++) {
    tiles8[2 * (tc + j)] = list_word(e, min(8, c - 8 * j));
    tiles8[2 * (tc + j) + 1] = off + 8 * j;
  }
  if (sh) {
    tiles8[2 * (nch + ts)] = list_word(e, srows);
    tiles8[2 * (nch + ts) + 1] = off + nl * MOE_BM;
  }
}

// One block of ROUTE_THREADS threads; dynamic shared memory (2E + 33) ints and 36E bytes, E <= 1024.
// tiles receives (list_word(expert, rows), first row) for every MOE_BM-row tile of real rows,
// *ntiles their number,
// the tiles of more than ROUTE_SHORT_TILE rows first (each group in order of expert and row), so
// that the decode GEMMs' blocks of the longer tiles are placed in the grid's first waves, not
// its last (on an H200, docs/perf.md v47: Qwen3-30B-A3B at 64 tokens 2 % lower under uniform
// routing, a few experts of 128 with more than 8 rows; under Zipf routing the three bench shapes
// 4-11 % lower at 16-128 tokens);
// tiles8 (when not null: decode batches on the 8-token kernels) receives the same list with each
// tile of more than ROUTE_SHORT_TILE rows as its 8-row chunks, an entry each, ntiles[1]
// their number (at most 65535 entries, which the host's use of it bounds);
// tilesh (when not null: decode GEMMs on moe_gemm_dec1wh) receives the heavy list: for each tile of
// more than ROUTE_SHORT_TILE rows two entries, in the tile list's order (at twice its index),
// (list_word(expert, the tile's rows), first row | DEC_HEAVY_ROW | half << DEC_HALF_SHIFT) for
// halves 0 and 1 of a tile of more than 16 rows, else its two 8-row chunks; then the short tiles;
// ntiles[2] their number.
// wtiles receives (expert, first row, rows) for the wgmma GEMM's tiles, *nwtiles their number
// (when wg, the most rows of a tile, at most MOE_WG_TOK, is not 0): each expert's real rows split
// into ceil(count/wg) tiles of equal size rounded up to 8 rows (the last smaller). Decode
// batches of up to 64 pairs take moe_route_small instead. With pre set (moe_route_count ran
// first and left each chunk's counts there), the block turns them into each chunk's counts of
// the chunks before it, sums the chunks' invalid ids into *err, and leaves the placing of the
// pairs to moe_route_scatter.
extern "C" __global__ void __launch_bounds__(ROUTE_THREADS, 1)
moe_route(const int* __restrict__ ids, const int* __restrict__ expert_map, i64 M, i64 topk, i64 E, i64 Eg,
          int* __restrict__ counts, int* __restrict__ offsets, int* __restrict__ expert_ids,
          int* __restrict__ row_pair, int* __restrict__ inv_perm, int* __restrict__ tiles,
          int* __restrict__ ntiles, int* __restrict__ err, int* __restrict__ wtiles, int* __restrict__ nwtiles, i64 wg,
          int* __restrict__ pre, int* __restrict__ tiles8, int* __restrict__ tilesh) {
  TRACE_SCOPE(TRACE_ROUTE);
  pdl_begin();
  extern __shared__ int smem[];
  int* scount = smem;
  int* scursor = smem + E;
  int* sbuf = smem + 2 * E;
  u8* wcnt = reinterpret_cast<u8*>(smem + 2 * E + 33);  // (E, 36): pairs of expert e in warp w of a chunk
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const i64 P = M * topk;
  if (tid < E) scount[tid] = 0;
  for (i64 k = tid; k < 9 * E; k += ROUTE_THREADS) reinterpret_cast<uint32_t*>(wcnt)[k] = 0;
  if (tid == 0) *err = 0;
  __syncthreads();
  if (pre) {
    // Each expert's column of chunk counts (moe_route_count) becomes, in place, the counts of the
    // chunks before each chunk, for moe_route_scatter; its total is the expert's count. The
    // column's loads go eight at a time, ahead of the running sum.
    const int nch = (int)((P + ROUTE_THREADS - 1) / ROUTE_THREADS);
    if (tid < E) {
      int run = 0, k = 0;
      for (; k + 8 <= nch; k += 8) {
        int c[8];
#pragma unroll
        for (int u = 0; u < 8; u++) c[u] = pre[(k + u) * E + tid];
#pragma unroll
        for (int u = 0; u < 8; u++) {
          pre[(k + u) * E + tid] = run;
          run += c[u];
        }
      }
      for (; k < nch; k++) {
        const int c = pre[k * E + tid];
        pre[k * E + tid] = run;
        run += c;
      }
      scount[tid] = run;
    }
    int nbad = 0;
    for (int k = tid; k < nch; k += ROUTE_THREADS) nbad += pre[nch * E + k];
    if (nbad) atomicAdd(err, nbad);  // after the barrier above that follows *err = 0
    __syncthreads();
  } else {
#pragma unroll 4
    for (i64 i = tid; i < P; i += ROUTE_THREADS) {
      int le = local_expert(ids, expert_map, i, Eg, err, true);
      if (le >= 0) atomicAdd(&scount[le], 1);
    }
    __syncthreads();
  }
  const int cnt = tid < E ? scount[tid] : 0;
  // The expert's tiles (expert_tiles); the tiles before it in the expert order are the scans' sum.
  int nlong, nshort;
  expert_tiles(cnt, nlong, nshort);
  // With tiles8, the long tiles' 8-row chunks (nch) are scanned with them, 16 bits each.
  const int nch = tiles8 ? expert_chunks(cnt, nlong) : 0;
  int nl, ns, loff, nc = 0, coff = 0;
  if (tiles8) {
    const int v = block_exclusive_scan(nlong | nch << 16, sbuf, &nl);
    loff = v & 0xffff, coff = v >> 16, nc = nl >> 16, nl &= 0xffff;
  } else {
    loff = block_exclusive_scan(nlong, sbuf, &nl);
  }
  const int soff = block_exclusive_scan(nshort, sbuf, &ns);
  const int tiles_total = nl + ns, msum = tiles_total * MOE_BM, off = (loff + soff) * MOE_BM;
  int wtiles_total = 0, wtoff = 0;
  // Tile sizes round up to 8 rows, so every tile starts at a multiple of 8 (the staged FP16
  // tokens' 8-row core matrices); (wn-1)·wsize < cnt still holds, and wsize <= wg, as wg is a
  // multiple of 8.
  const int wcap = (int)wg, wn = wcap ? (cnt + wcap - 1) / wcap : 0, wsize = wn ? ((cnt + wn - 1) / wn + 7) / 8 * 8 : 0;
  if (wg) wtoff = block_exclusive_scan(wn, sbuf, &wtiles_total);
  if (tid < E) {
    counts[tid] = cnt;
    offsets[tid] = off;
    scursor[tid] = off;
    list_expert(tid, off, cnt, nlong, nshort, loff, nl, soff, tiles, tiles8, coff, nc, tilesh);
    for (int j = 0; j < wn; j++) {
      wtiles[3 * (wtoff + j)] = tid;
      wtiles[3 * (wtoff + j) + 1] = off + j * wsize;
      wtiles[3 * (wtoff + j) + 2] = min(wsize, cnt - j * wsize);
    }
  }
  if (tid == 0) {
    offsets[E] = msum;
    *ntiles = tiles_total;
    if (tiles8) ntiles[1] = nc + ns;
    if (tilesh) ntiles[2] = 2 * nl + ns;
    *nwtiles = wtiles_total;
  }
  __syncthreads();  // scursor
  if (pre) {
    // Only the segments' padding rows are marked (at most 31 an expert, where the layout has
    // thousands of rows): moe_route_scatter writes every real row, the first cnt of its segment.
    // A warp takes an expert at a time, a lane a row, so that the stores coalesce.
    for (int e = warp; e < E; e += ROUTE_THREADS / 32) {
      const int c = scount[e];
      if (lane < (MOE_BM - c % MOE_BM) % MOE_BM) {
        const int r = scursor[e] + c + lane;
        expert_ids[r] = -1;
        row_pair[r] = -1;
      }
    }
    return;  // moe_route_scatter places the pairs
  }
  for (int r = tid; r < msum; r += ROUTE_THREADS) {
    expert_ids[r] = -1;
    row_pair[r] = -1;
  }
  __syncthreads();
  // Stable scatter, pairs in chunks of ROUTE_THREADS: inside a warp, lanes with the same expert
  // are ranked by lane (match); across the chunk's warps, by the counts of the earlier warps,
  // which the warps' leaders leave in wcnt[e][w] (one byte each, rows of 36 bytes so that the
  // rows of a warp's different experts start in different banks); scursor[e] then moves past
  // the chunk's pairs of expert e. Three barriers per chunk.
  int le_next = tid < P ? local_expert(ids, expert_map, tid, Eg, err, false) : -2;
  for (i64 base = 0; base < P; base += ROUTE_THREADS) {
    const i64 i = base + tid;
    const int le = le_next;  // the next chunk's ids load while this one is placed
    le_next = i + ROUTE_THREADS < P ? local_expert(ids, expert_map, i + ROUTE_THREADS, Eg, err, false) : -2;
    const unsigned peers = __match_any_sync(0xffffffffu, le);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (le >= 0 && rank == 0) wcnt[le * 36 + warp] = (u8)__popc(peers);
    __syncthreads();
    const int row = le >= 0 ? scursor[le] + chunk_rank(wcnt, le, warp, rank) : -1;
    place_pair(le, row, i, expert_ids, row_pair, inv_perm);
    int total = 0;
    if (tid < E) {
      const uint32_t* wc = reinterpret_cast<const uint32_t*>(wcnt + tid * 36);
#pragma unroll
      for (int k = 0; k < 8; k++) total = (int)__dp4a(wc[k], 0x01010101u, (unsigned)total);
    }
    __syncthreads();
    if (tid < E) {
      scursor[tid] += total;
      uint32_t* wc = reinterpret_cast<uint32_t*>(wcnt + tid * 36);
#pragma unroll
      for (int k = 0; k < 8; k++) wc[k] = 0;
    }
    __syncthreads();
  }
}

// moe_route_small's gather: piece idx of the tokens' rows (token-major, pieces a row; as loaded)
// to the rows of its token's pairs (srow: each pair's row, -1 for none) in the decode GEMM's byte
// order; and scale idx (G a row) likewise.
__device__ __forceinline__ void route_put_piece(u8* __restrict__ a1q_perm, const int* srow, int tk, int pieces, int idx,
                                                uint4 v) {
  const int t = idx / pieces, j = idx - t * pieces;
  v = dec_order16(v);
  for (int k = 0; k < tk; k++) {
    const int row = srow[t * tk + k];
    if (row >= 0) reinterpret_cast<uint4*>(a1q_perm)[(i64)row * pieces + j] = v;
  }
}
__device__ __forceinline__ void route_put_scale(float* __restrict__ a1s_perm, const int* srow, int tk, int G, int idx,
                                                float v) {
  const int t = idx / G, g = idx - t * G;
  for (int k = 0; k < tk; k++) {
    const int row = srow[t * tk + k];
    if (row >= 0) a1s_perm[(i64)row * G + g] = v;
  }
}

#define ROUTE_SMALL_THREADS 256
#define ROUTE_SMALL_PAIRS 64
#define ROUTE_SMALL_PRE 4  // tokens' pieces a thread loads before the routing

// Routing of decode batches (P = M·topk <= 64 pairs, E <= 1024) in blocks of
// ROUTE_SMALL_THREADS threads, with the gather of the rows: the same results as moe_route
// (counts, offsets, the MOE_BM-row tile list and with tiles8 its chunk list, expert_ids, row_pair,
// inv_perm, *err; no wgmma tiles)
// plus moe_permute's rows and scales (a1q, a1s: (M, K), (M, K/128)) in the decode GEMM's byte
// order (dec_order8), with four block barriers after the ids: every row of the layout's bound
// (P + min(P, E)·31, rounded up to MOE_BM) marked as padding while the ids load, one thread a
// pair (its expert counted, then its rank among the earlier pairs of its expert by a scan of the
// pairs in shared memory), one thread a run of consecutive experts (ceil(E / 256)) for the
// segment offsets and tiles (a block-wide scan); then every thread gathers.
// Every block routes the pairs in its shared memory (a few hundred bytes of ids), block 0 alone
// writes the routing's results, and the blocks share the gather: the grid's thread g takes the
// pieces g, g + stride, ... (stride: the grid's threads). The gather's loads do not depend on the
// routing: each thread loads up to ROUTE_SMALL_PRE 16-byte pieces of the tokens' rows (and one
// scale) right after the wait, so that their round trip overlaps the ids' and the scan, and
// stores each to the rows of the token's pairs at the end; pieces past those go through the loop
// after. Dynamic shared memory 8E bytes.
extern "C" __global__ void __launch_bounds__(ROUTE_SMALL_THREADS, 1)
moe_route_small(const int* __restrict__ ids, const int* __restrict__ expert_map, i64 M, i64 topk, i64 E, i64 Eg,
                int* __restrict__ counts, int* __restrict__ offsets, int* __restrict__ expert_ids,
                int* __restrict__ row_pair, int* __restrict__ inv_perm, int* __restrict__ tiles,
                int* __restrict__ ntiles, int* __restrict__ err, const u8* __restrict__ a1q, const float* __restrict__ a1s,
                i64 K, u8* __restrict__ a1q_perm, float* __restrict__ a1s_perm, int* __restrict__ tiles8) {
  TRACE_SCOPE(TRACE_ROUTE);
  pdl_begin();
  extern __shared__ int smem[];
  int* scount = smem;      // pairs per local expert
  int* soff = smem + E;    // segment offsets
  __shared__ int sle[ROUTE_SMALL_PAIRS], srow[ROUTE_SMALL_PAIRS], swarp[ROUTE_SMALL_THREADS / 32];
  const int tid = threadIdx.x, lane = tid % 32, ne = (int)E, P = (int)(M * topk);
  const bool lead = blockIdx.x == 0;  // the block that writes the routing's results
  const int first = (int)blockIdx.x * ROUTE_SMALL_THREADS + tid, stride = (int)gridDim.x * ROUTE_SMALL_THREADS;
  for (int e = tid; e < ne; e += ROUTE_SMALL_THREADS) scount[e] = 0;
  // The tokens' first pieces and scales (token-major: piece idx of a1q is token idx / pieces).
  const int pieces = (int)(K / 16), G = (int)(K / MOE_GROUP), tk = (int)topk, npc = (int)M * pieces, nsc = (int)M * G;
  uint4 pre[ROUTE_SMALL_PRE];
#pragma unroll
  for (int u = 0; u < ROUTE_SMALL_PRE; u++) {
    const int idx = first + u * stride;
    if (idx < npc) pre[u] = reinterpret_cast<const uint4*>(a1q)[idx];
  }
  const float pscale = first < nsc ? a1s[first] : 0.f;
  // Pair tid's local expert: -1 for an id of -1, an id without a local expert, or an invalid id
  // (outside [-1, Eg): counted in *err).
  int le = -2;
  bool bad = false;
  if (tid < P) le = expert_of(ids[tid], expert_map, Eg, &bad);
  if (lead) {
    // Every row of the layout's bound marked as padding, while the ids load; the barriers below
    // order these stores before the real rows' entries.
    const int bound = (P + min(P, ne) * (MOE_BM - 1) + MOE_BM - 1) / MOE_BM * MOE_BM;
    for (int r = tid; r < bound; r += ROUTE_SMALL_THREADS) {
      expert_ids[r] = -1;
      row_pair[r] = -1;
    }
  }
  __syncthreads();  // scount zeroed
  if (tid < P) {
    sle[tid] = le;
    if (le >= 0) atomicAdd(&scount[le], 1);
  }
  const int nbad = __syncthreads_count(bad);  // also: the counts and sle
  TRACE_STEP(TRACE_ROUTE, 0, 0);
  {
    // Thread t: experts t·per ... (t+1)·per - 1 (one each up to ROUTE_SMALL_THREADS experts). An
    // expert's tiles: its long ones (more than ROUTE_SHORT_TILE rows, its first), then at most
    // one short one (its last); the list holds the long tiles first, as moe_route's. One scan
    // over the block of the counts of long tiles, short tiles and (with tiles8, as moe_route's)
    // the long tiles' 8-row chunks, 10 bits each (at most P <= 64 each): the warps' shuffle
    // scans, one barrier, then each thread adds the totals of the warps below its own; rows are
    // MOE_BM times the tiles before in the expert order. (Warp 0 alone, a lane a run of E/32
    // experts, took 1.5 µs at 128 experts and 2.4 at 256 on an H200: docs/perf.md.)
    const int per = (ne + ROUTE_SMALL_THREADS - 1) / ROUTE_SMALL_THREADS, e0 = tid * per;
    int mine = 0;
    for (int k = 0; k < per; k++)
      if (e0 + k < ne) {
        const int c = scount[e0 + k];
        int nl, sh;
        expert_tiles(c, nl, sh);
        const int nch = tiles8 ? expert_chunks(c, nl) : 0;
        mine += nl + (sh << 10) + (nch << 20);
      }
    int incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += n;
    }
    if (lane == 31) swarp[tid / 32] = incl;
    __syncthreads();  // swarp
    int below = 0, all = 0;
#pragma unroll
    for (int w = 0; w < ROUTE_SMALL_THREADS / 32; w++) {
      const int v = swarp[w];
      below += w < tid / 32 ? v : 0;
      all += v;
    }
    const int nlong = all & 0x3ff, nshort = (all >> 10) & 0x3ff, ntotal = nlong + nshort, nchunk = all >> 20;
    const int before = below + incl - mine;
    int tl = before & 0x3ff, ts = (before >> 10) & 0x3ff, tc = before >> 20;
    for (int k = 0; k < per; k++) {
      const int e = e0 + k;
      if (e >= ne) break;
      const int c = scount[e];
      int nl, sh;
      expert_tiles(c, nl, sh);
      const int off = (tl + ts) * MOE_BM;
      soff[e] = off;
      if (lead) {
        counts[e] = c;
        offsets[e] = off;
        list_expert(e, off, c, nl, sh, tl, nlong, ts, tiles, tiles8, tc, nchunk);
        if (tiles8) tc += expert_chunks(c, nl);
      }
      tl += nl, ts += sh;
    }
    if (lead && tid == 0) {
      offsets[E] = ntotal * MOE_BM;
      *ntiles = ntotal;
      if (tiles8) ntiles[1] = nchunk + nshort;
      *err = nbad;
    }
  }
  __syncthreads();  // soff, and the padding marks before the real rows' entries
  TRACE_STEP(TRACE_ROUTE, 1, 0);
  if (tid < P) {
    int row = -1;
    if (le >= 0) {
      int rank = 0;
      for (int j = 0; j < tid; j++) rank += sle[j] == le;
      row = soff[le] + rank;
    }
    if (lead) place_pair(le, row, tid, expert_ids, row_pair, inv_perm);
    srow[tid] = row;
  }
  __syncthreads();  // srow
  TRACE_STEP(TRACE_ROUTE, 2, 0);
  TRACE_STEP(TRACE_ROUTE, 3, first < npc ? pre[0].x : 0u);
  // Each loaded piece (and scale) to the rows of its token's pairs; then the pieces past the
  // first ROUTE_SMALL_PRE a thread, their loads issued before their stores.
#pragma unroll
  for (int u = 0; u < ROUTE_SMALL_PRE; u++) {
    const int idx = first + u * stride;
    if (idx >= npc) break;
    route_put_piece(a1q_perm, srow, tk, pieces, idx, pre[u]);
  }
  TRACE_STEP(TRACE_ROUTE, 4, 0);
  if (first < nsc) route_put_scale(a1s_perm, srow, tk, G, first, pscale);
  TRACE_STEP(TRACE_ROUTE, 5, 0);
  for (int b = first + ROUTE_SMALL_PRE * stride; b < npc; b += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int idx = b + u * stride;
      if (idx < npc) v[u] = reinterpret_cast<const uint4*>(a1q)[idx];
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int idx = b + u * stride;
      if (idx >= npc) break;
      route_put_piece(a1q_perm, srow, tk, pieces, idx, v[u]);
    }
  }
  for (int idx = first + stride; idx < nsc; idx += stride) route_put_scale(a1s_perm, srow, tk, G, idx, a1s[idx]);
}

// The spread routing's count (more than scatterPairs pairs, the host's choice), one block per
// chunk of ROUTE_THREADS pairs, one pair a thread: pre[c·E + e] receives the number of chunk c's
// pairs on local expert e, and pre[nch·E + c] the number of its ids outside [-1, Eg) (nch =
// gridDim.x chunks). moe_route then scans each expert's column. (moe_route's single block took
// the chunks one after another, two barriers and a round trip of loads each: about 1 µs a
// chunk.) grid = nch, block = ROUTE_THREADS, dynamic shared memory 4E bytes.
extern "C" __global__ void __launch_bounds__(ROUTE_THREADS, 1)
moe_route_count(const int* __restrict__ ids, const int* __restrict__ expert_map, i64 M, i64 topk, i64 E, i64 Eg,
                int* __restrict__ pre) {
  TRACE_SCOPE(TRACE_ROUTE);
  pdl_begin();
  extern __shared__ int smem[];
  const int tid = threadIdx.x;
  const i64 P = M * topk, i = (i64)blockIdx.x * ROUTE_THREADS + tid;
  for (int e = tid; e < E; e += ROUTE_THREADS) smem[e] = 0;
  bool bad = false;
  int le = -1;
  if (i < P) le = expert_of(ids[i], expert_map, Eg, &bad);
  __syncthreads();  // smem zeroed
  if (le >= 0) atomicAdd(&smem[le], 1);
  const int nbad = __syncthreads_count(bad);  // also: the counts
  for (int e = tid; e < E; e += ROUTE_THREADS) pre[(i64)blockIdx.x * E + e] = smem[e];
  if (tid == 0) pre[(i64)gridDim.x * E + blockIdx.x] = nbad;
}

// Places the pairs of chunk blockIdx.x (ROUTE_THREADS pairs, one per thread) as moe_route's
// scatter does, from the segment offsets and pre (moe_route_count, then moe_route with pre set):
// expert_ids, row_pair and inv_perm of its pairs. Chunks are independent, so the stores spread
// over the SMs.
// grid = ceil(P / ROUTE_THREADS), block = ROUTE_THREADS, dynamic shared memory 4E + 36E bytes.
extern "C" __global__ void __launch_bounds__(ROUTE_THREADS, 1)
moe_route_scatter(const int* __restrict__ ids, const int* __restrict__ expert_map, i64 M, i64 topk, i64 E, i64 Eg,
                  const int* __restrict__ offsets, const int* __restrict__ pre, int* __restrict__ expert_ids,
                  int* __restrict__ row_pair, int* __restrict__ inv_perm) {
  TRACE_SCOPE(TRACE_PERMUTE);
  pdl_begin();
  extern __shared__ int smem[];
  int* sbase = smem;
  u8* wcnt = reinterpret_cast<u8*>(smem + E);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const i64 P = M * topk, c = blockIdx.x, i = c * ROUTE_THREADS + tid;
  if (tid < E) sbase[tid] = offsets[tid] + pre[c * E + tid];
  for (i64 k = tid; k < 9 * E; k += ROUTE_THREADS) reinterpret_cast<uint32_t*>(wcnt)[k] = 0;
  const int le = i < P ? local_expert(ids, expert_map, i, Eg, nullptr, false) : -2;
  const unsigned peers = __match_any_sync(0xffffffffu, le);
  const int rank = __popc(peers & ((1u << lane) - 1u));
  __syncthreads();  // wcnt zeroed
  if (le >= 0 && rank == 0) wcnt[le * 36 + warp] = (u8)__popc(peers);
  __syncthreads();
  place_pair(le, le >= 0 ? sbase[le] + chunk_rank(wcnt, le, warp, rank) : -1, i, expert_ids, row_pair, inv_perm);
}

// Gathers the FP8 row and scales of every real row of the permuted layout. With dec set (for the
// decode GEMM, which reads only the real rows of a tile): one block per routed pair (grid.x = P),
// its row inv_perm[pair] in the decode GEMM's byte order (dec_order8), padding rows left as they
// are; at M = 64 zeroing them wrote several times the real rows' bytes. Else one block per row
// of the layout (grid.x = the largest possible M_sum), padding rows zeroed. block = 128.
extern "C" __global__ void moe_permute(const u8* __restrict__ a1q, const float* __restrict__ a1s,
                                       const int* __restrict__ row_pair, const int* __restrict__ inv_perm,
                                       const int* __restrict__ offsets, i64 E, i64 K, i64 topk, u8* __restrict__ a1q_perm,
                                       float* __restrict__ a1s_perm, i64 dec) {
  TRACE_SCOPE(TRACE_PERMUTE);
  pdl_begin();
  if (dec) {
    const i64 r = inv_perm[blockIdx.x];
    if (r >= 0) gather_row(a1q, a1s, blockIdx.x / topk, r, K, a1q_perm, a1s_perm, true);
    return;
  }
  const i64 t = permute_token(row_pair, offsets, E, K, topk, a1q_perm, a1s_perm);
  if (t >= 0) gather_row(a1q, a1s, t, blockIdx.x, K, a1q_perm, a1s_perm, false);
}

// The wgmma path's gather writes only the scales (GEMM1's staging reads the tokens unpermuted
// through row_pair, and writes the permuted rows of the tiles that do not fold itself): row r of
// the layout, r < offsets[E], gets token row_pair[r] / topk's G = K/128 scales, a padding row
// (row_pair[r] < 0) zeros; rows from offsets[E] on are not written. Block b takes the rows
// [b·rpb, (b+1)·rpb) as one run of rpb·G scales, a thread every PS_THREADS-th of them, PS_PER at
// a time with their loads issued before their stores. (A block per row, G of its 128 threads
// busy behind a chain of dependent loads, took 46 µs at Qwen3-30B-A3B M = 4096 for 3 MB.)
// grid = ceil(rows / rpb), block = PS_THREADS.
#define PS_THREADS 256
#define PS_PER 4
extern "C" __global__ void __launch_bounds__(PS_THREADS)
moe_permute_scales(const float* __restrict__ a1s, const int* __restrict__ row_pair, const int* __restrict__ offsets,
                   i64 E, i64 G, i64 topk, i64 rpb, float* __restrict__ a1s_perm) {
  TRACE_SCOPE(TRACE_PERMUTE);
  pdl_begin();
  const i64 r0 = (i64)blockIdx.x * rpb, nrows = min((i64)offsets[E] - r0, rpb);
  if (nrows <= 0) return;
  const int g32 = (int)G, n = (int)nrows * g32;
  float* dst = a1s_perm + r0 * G;
  for (int base = threadIdx.x; base < n; base += PS_THREADS * PS_PER) {
    int pair[PS_PER], g[PS_PER];
#pragma unroll
    for (int u = 0; u < PS_PER; u++) {
      const int e = base + u * PS_THREADS, r = e / g32;
      g[u] = e - r * g32;
      pair[u] = e < n ? row_pair[r0 + r] : -1;
    }
    float v[PS_PER];
#pragma unroll
    for (int u = 0; u < PS_PER; u++) v[u] = pair[u] >= 0 ? a1s[(i64)(pair[u] / (int)topk) * G + g[u]] : 0.f;
#pragma unroll
    for (int u = 0; u < PS_PER; u++) {
      const int e = base + u * PS_THREADS;
      if (e < n) dst[e] = v[u];
    }
  }
}

