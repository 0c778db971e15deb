// Prefix beam search over Gram-CTC (and CTC) outputs, with an optional n-gram LM reached
// through a callback. Built as the separate module speechlab._decode and called through ctypes
// (plain C ABI below; no torch, no pybind11), see speechlab/decode/prefix_beam.py.
//
// Hypotheses are prefixes (strings), kept as nodes of a character trie: two paths that spell
// the same string reach the same node, so they are merged. A prefix ℓ carries log-probabilities
//   pb      : paths whose collapse is ℓ and whose current frame is the blank,
//   pg[n]   : paths whose last emitted gram is ℓ's suffix of length n (n = 1..max_n) and whose
//             current frame emits it.
// Frame t, gram h of m characters, child = ℓ + h:
//   blank   : pb'(ℓ)      ⊕= (pb ⊕ Σ_n pg[n]) + lp[blank]
//   repeat  : pg'(ℓ)[n]   ⊕= pg[n] + lp[gram(ℓ, n)]                       (merge of repeats)
//   extend  : pg'(ℓ+h)[m] ⊕= (pb ⊕ Σ_{n: gram(ℓ,n) ≠ h} pg[n]) + lp[h]
// With unigrams only this is the usual CTC prefix beam search (pb, pnb).
// LM: word mode scores a word when a space follows it (α·ln P(w | history) + β), the last
// partial word and </s> at the end; char mode scores every character (the space as a token).
// Scores are cached per trie node (each node is created once) and per (LM state, word).
// Character sets of any size (thousands of CJK characters): every (node, char) edge of the tries
// is keyed node * (num_chars + 1) + char in 64 bits (node < 2^31, char <= num_chars < 2^31).
// Optional lexicon (word mode): a word that leaves the lexicon's prefixes, or ends without being
// one of its words, gets unk_score once (-inf: only lexicon words can be spelled); inside the
// lexicon a partial word is ranked with a look-ahead: α·max unigram ln P of the words it can
// still become (flashlight's "max smearing"), replaced by the real LM score when the word ends.
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

inline double log_add(double a, double b) {
  if (a == kNegInf) return b;
  if (b == kNegInf) return a;
  return a > b ? a + std::log1p(std::exp(b - a)) : b + std::log1p(std::exp(a - b));
}

// LM callback: ln P(word | state) with the next state in *next_state; word = n char ids, n < 0
// asks for ln P(</s> | state). Returns NaN when the Python side raised.
typedef double (*lm_fn)(int32_t state, const int32_t* chars, int32_t n, int32_t* next_state);

struct Node {
  int32_t parent;
  int32_t ch;          // char id (1..C); 0 for the root
  int32_t depth;
  int32_t word_start;  // depth where the current (partial) word begins
  int32_t lm_state;    // LM state after the last scored token
  double lm_score;     // α·ln P + β summed over the scored tokens/words
  int32_t words;       // completed words
  int32_t lex;         // lexicon trie node of the partial word (0: none yet); -1: off it (paid unk)
  double look;         // lexicon look-ahead of the partial word (ranking only)
};

struct Hyp {
  int32_t node;
  double pb;
  double pg[8];  // index n = 1..max_n (max_n <= 7)
  double total() const {
    return pg_total(pb);
  }
  double pg_total(double acc) const {
    for (int i = 1; i < 8; ++i) acc = log_add(acc, pg[i]);
    return acc;
  }
};

struct Options {
  int32_t beam_size;
  int32_t token_beam;       // <= 0: all tokens
  double token_threshold;   // drop tokens with lp < max lp - threshold (inf: none)
  double beam_threshold;    // drop hyps with score < best - threshold (inf: none)
  double lm_weight;         // α
  double word_score;        // β
  int32_t lm_mode;          // 0 none, 1 word, 2 char
  int32_t space_id;         // char id of the word separator (word mode), -1 none
  double unk_score;         // lexicon: added once to a word outside it
};

// What outlives one utterance (one per decoder object): the LM score cache, keyed by (LM state,
// word) — the Python side interns LM states, so ids are stable — and the lexicon trie.
struct Context {
  std::unordered_map<std::string, std::pair<double, int32_t>> lm_cache;
  bool has_lexicon = false;
  uint64_t width = 0;               // num_chars + 1
  // lexicon trie: node * width + char -> node (a map, not a dense nodes x width table, which
  // would take width ints per node: gigabytes for a large lexicon over thousands of characters)
  std::unordered_map<uint64_t, int32_t> lex_next;
  std::vector<char> lex_word;       // trie node ends a word
  std::vector<double> lex_look;     // α · max unigram ln P of the words below the node

  // the lexicon trie's node after char c from node v (v >= 0); -1 when it leaves the lexicon
  int32_t lex_step(int32_t v, int32_t c) const {
    auto it = lex_next.find(static_cast<uint64_t>(v) * width + static_cast<uint64_t>(c));
    return it == lex_next.end() ? -1 : it->second;
  }

  void set_lexicon(const int32_t* chars, const int32_t* offsets, int32_t n, const double* lm,
                   double lm_weight, int32_t num_chars) {
    has_lexicon = n > 0;
    width = static_cast<uint64_t>(num_chars) + 1;
    lex_next.clear();
    lex_word.assign(1, 0);
    lex_look.assign(1, 0.0);
    for (int32_t w = 0; w < n; ++w) {
      const double look = lm ? lm_weight * lm[w] : 0.0;
      int32_t v = 0;
      for (int32_t j = offsets[w]; j < offsets[w + 1]; ++j) {
        const uint64_t at = static_cast<uint64_t>(v) * width + static_cast<uint64_t>(chars[j]);
        auto it = lex_next.find(at);
        if (it == lex_next.end()) {
          it = lex_next.emplace(at, static_cast<int32_t>(lex_word.size())).first;
          lex_word.push_back(0);
          lex_look.push_back(look);
        }
        v = it->second;
        lex_look[v] = std::max(lex_look[v], look);
      }
      lex_word[v] = 1;
    }
  }
};

class Search {
 public:
  Search(const int32_t* gram_chars, const int32_t* gram_offsets, int32_t num_tokens,
         int32_t num_chars, const Options& opt, lm_fn lm, Context& ctx)
      : num_tokens_(num_tokens), base_(static_cast<uint64_t>(num_chars) + 1), opt_(opt), lm_(lm),
        ctx_(ctx), has_lexicon_(ctx.has_lexicon && opt.lm_mode != 2) {
    gram_len_.assign(num_tokens, 0);
    gram_start_.assign(num_tokens, 0);
    max_n_ = 1;
    for (int32_t g = 1; g < num_tokens; ++g) {
      gram_start_[g] = gram_offsets[g];
      gram_len_[g] = gram_offsets[g + 1] - gram_offsets[g];
      max_n_ = std::max(max_n_, gram_len_[g]);
      // the gram's chars, last first, as a path of the suffix trie (base_^n would overflow
      // 64 bits as one number for long grams over a large character set)
      int32_t v = 0;
      for (int32_t j = gram_offsets[g + 1] - 1; j >= gram_offsets[g]; --j) {
        const uint64_t key = edge(v, gram_chars[j]);
        auto it = suffix_next_.find(key);
        if (it == suffix_next_.end()) {
          it = suffix_next_.emplace(key, static_cast<int32_t>(suffix_gram_.size())).first;
          suffix_gram_.push_back(-1);
        }
        v = it->second;
      }
      suffix_gram_[v] = g;
    }
    chars_.assign(gram_chars, gram_chars + gram_offsets[num_tokens]);
    nodes_.push_back(Node{-1, 0, 0, 0, 0, 0.0, 0, 0, 0.0});  // lex 0: the lexicon's root
  }

  // key of the edge (node, char c) of a trie: unique for 1 <= c <= num_chars
  uint64_t edge(int32_t node, int32_t c) const {
    return static_cast<uint64_t>(node) * base_ + static_cast<uint64_t>(c);
  }

  int32_t lex_step(int32_t v, int32_t c) const { return ctx_.lex_step(v, c); }

  // the word ending at a node with trie state v is finished: penalty when not a lexicon word
  void finish_word(Node* n) {
    if (has_lexicon_ && n->lex > 0 && !ctx_.lex_word[n->lex]) n->lm_score += opt_.unk_score;
    n->lex = 0;
    n->look = 0.0;
  }

  // would appending gram g to node leave the lexicon (only asked when unk_score is -inf)?
  bool leaves_lexicon(int32_t node, int32_t g) const {
    int32_t v = nodes_[node].lex;
    for (int32_t j = 0; j < gram_len_[g]; ++j) {
      const int32_t c = chars_[gram_start_[g] + j];
      if (c == opt_.space_id) {
        if (v > 0 && !ctx_.lex_word[v]) return true;
        v = 0;
      } else {
        if (v < 0) return true;
        v = lex_step(v, c);
        if (v < 0) return true;
      }
    }
    return false;
  }

  int max_n() const { return max_n_; }
  bool failed() const { return failed_; }

  // gram id of the suffix of length n of node (-1 when not a gram), n = 1..max_n
  void suffix_grams(int32_t node, int32_t* out) {
    for (int n = 0; n <= max_n_; ++n) out[n] = -1;
    int32_t s = 0;  // suffix trie node of the last n chars
    int32_t v = node;
    for (int n = 1; n <= max_n_ && v > 0; ++n) {
      auto it = suffix_next_.find(edge(s, nodes_[v].ch));
      if (it == suffix_next_.end()) break;  // no gram ends with these chars, nor a longer one
      s = it->second;
      out[n] = suffix_gram_[s];
      v = nodes_[v].parent;
    }
  }

  double lm_call(int32_t state, const int32_t* w, int32_t n, int32_t* next) {
    std::string key(reinterpret_cast<const char*>(&state), sizeof(state));
    if (n >= 0) key.append(reinterpret_cast<const char*>(w), sizeof(int32_t) * n);
    else key.append("$");
    auto it = ctx_.lm_cache.find(key);
    if (it != ctx_.lm_cache.end()) {
      *next = it->second.second;
      return it->second.first;
    }
    double s = lm_(state, w, n, next);
    if (std::isnan(s)) failed_ = true;
    if (!std::isnan(s)) ctx_.lm_cache.emplace(std::move(key), std::make_pair(s, *next));
    return s;
  }

  // the child of node for char c, created (with its LM score) on first use
  int32_t child(int32_t node, int32_t c) {
    const uint64_t key = edge(node, c);
    auto it = children_.find(key);
    if (it != children_.end()) return it->second;
    const Node p = nodes_[node];
    Node n{node, c, p.depth + 1, p.word_start, p.lm_state, p.lm_score, p.words, p.lex, p.look};
    const int32_t id = static_cast<int32_t>(nodes_.size());
    if (opt_.lm_mode == 2) {
      int32_t next = 0;
      double s = lm_call(p.lm_state, &c, 1, &next);
      n.lm_state = next;
      n.lm_score += opt_.lm_weight * s;
      if (c == opt_.space_id) {
        n.words += 1;
        n.lm_score += opt_.word_score;
      }
    } else if (c == opt_.space_id) {
      n.word_start = n.depth;
      if (p.depth > p.word_start) {
        finish_word(&n);
        score_word(node, p.word_start, p.lm_state, &n);
      }
      n.lex = 0;
      n.look = 0.0;
    } else if (has_lexicon_ && n.lex >= 0) {
      n.lex = lex_step(n.lex, c);
      if (n.lex < 0) {
        n.look = 0.0;
        n.lm_score += opt_.unk_score;
      } else {
        n.look = ctx_.lex_look[n.lex];
      }
    }
    nodes_.push_back(n);
    children_.emplace(key, id);
    return id;
  }

  // word = chars of `last` from depth `start` on; adds its score to *n (word mode)
  void score_word(int32_t last, int32_t start, int32_t state, Node* n) {
    std::vector<int32_t> w;
    for (int32_t v = last; v > 0 && nodes_[v].depth > start; v = nodes_[v].parent)
      w.push_back(nodes_[v].ch);
    std::reverse(w.begin(), w.end());
    n->words += 1;
    n->lm_score += opt_.word_score;
    if (opt_.lm_mode == 1) {
      int32_t next = 0;
      n->lm_score += opt_.lm_weight * lm_call(state, w.data(), static_cast<int32_t>(w.size()), &next);
      n->lm_state = next;
    }
  }

  // LM score of a finished prefix: + last partial word, + </s>
  double final_lm(int32_t node, int32_t* words) {
    Node n = nodes_[node];
    if (opt_.lm_mode != 2 && n.depth > n.word_start) {
      finish_word(&n);
      score_word(node, n.word_start, n.lm_state, &n);
    }
    if (opt_.lm_mode != 0) {
      int32_t next = 0;
      n.lm_score += opt_.lm_weight * lm_call(n.lm_state, nullptr, -1, &next);
    }
    *words = n.words;
    return n.lm_score;
  }

  double score(const Hyp& h) const {
    return h.total() + nodes_[h.node].lm_score + nodes_[h.node].look;
  }

  void run(const float* lp, int32_t T, int32_t V) {
    beam_.clear();
    Hyp root{0, 0.0, {}};
    for (double& x : root.pg) x = kNegInf;
    beam_.push_back(root);
    std::vector<int32_t> cand;
    std::vector<std::pair<float, int32_t>> order(V);
    std::unordered_map<int32_t, int32_t> index;
    std::vector<Hyp> next;
    int32_t sg[9];
    for (int32_t t = 0; t < T && !failed_; ++t) {
      const float* row = lp + static_cast<int64_t>(t) * V;
      // token candidates (non-blank), by pruning
      cand.clear();
      float best = -std::numeric_limits<float>::infinity();
      for (int32_t v = 1; v < V; ++v) best = std::max(best, row[v]);
      for (int32_t v = 1; v < V; ++v)
        if (row[v] > -std::numeric_limits<float>::infinity() &&
            static_cast<double>(row[v]) >= static_cast<double>(best) - opt_.token_threshold)
          cand.push_back(v);
      if (opt_.token_beam > 0 && static_cast<int32_t>(cand.size()) > opt_.token_beam) {
        std::partial_sort(cand.begin(), cand.begin() + opt_.token_beam, cand.end(),
                          [row](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
        cand.resize(opt_.token_beam);
      }
      next.clear();
      index.clear();
      auto slot = [&](int32_t node) -> Hyp& {
        auto it = index.find(node);
        if (it != index.end()) return next[it->second];
        index.emplace(node, static_cast<int32_t>(next.size()));
        Hyp h{node, kNegInf, {}};
        for (double& x : h.pg) x = kNegInf;
        next.push_back(h);
        return next.back();
      };
      const double lblank = row[0];
      for (size_t bi = 0; bi < beam_.size(); ++bi) {
        const Hyp h = beam_[bi];  // copy: `next` may reallocate
        const double tot = h.total();
        suffix_grams(h.node, sg);
        {
          Hyp& s = slot(h.node);
          s.pb = log_add(s.pb, tot + lblank);
          for (int n = 1; n <= max_n_; ++n)
            if (h.pg[n] != kNegInf && sg[n] > 0) s.pg[n] = log_add(s.pg[n], h.pg[n] + row[sg[n]]);
        }
        const bool strict = has_lexicon_ && opt_.unk_score == kNegInf;
        for (int32_t g : cand) {
          if (strict && leaves_lexicon(h.node, g)) continue;
          const int32_t m = gram_len_[g];
          double src = h.pb;
          for (int n = 1; n <= max_n_; ++n)
            if (h.pg[n] != kNegInf && !(n == m && sg[n] == g)) src = log_add(src, h.pg[n]);
          if (src == kNegInf) continue;
          int32_t c = h.node;
          for (int32_t j = 0; j < m; ++j) c = child(c, chars_[gram_start_[g] + j]);
          if (nodes_[c].lm_score == kNegInf) continue;  // e.g. off the lexicon with unk -inf
          Hyp& s = slot(c);
          s.pg[m] = log_add(s.pg[m], src + row[g]);
        }
      }
      // keep the best beam_size hypotheses (and those within beam_threshold of the best)
      std::vector<std::pair<double, int32_t>> ranked;
      ranked.reserve(next.size());
      for (size_t i = 0; i < next.size(); ++i) ranked.emplace_back(score(next[i]), static_cast<int32_t>(i));
      const size_t k = std::min(ranked.size(), static_cast<size_t>(opt_.beam_size));
      auto cmp = [&](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
        if (a.first != b.first) return a.first > b.first;
        return next[a.second].node < next[b.second].node;
      };
      std::partial_sort(ranked.begin(), ranked.begin() + k, ranked.end(), cmp);
      beam_.clear();
      const double floor = k ? ranked[0].first - opt_.beam_threshold : 0.0;
      for (size_t i = 0; i < k; ++i) {
        if (ranked[i].first == kNegInf || ranked[i].first < floor) break;
        beam_.push_back(next[ranked[i].second]);
      }
    }
  }

  // final ranking: (score, node, am score, lm score, words) best first; equal scores (also all
  // -inf: every hypothesis ends off a strict lexicon) keep the beam's order, i.e. the search's
  // ranking after the last frame, as the batched search does
  struct Final {
    double score, am, lm;
    int32_t node, words;
  };
  std::vector<Final> finals() {
    std::vector<Final> out;
    for (const Hyp& h : beam_) {
      int32_t words = 0;
      double lm = final_lm(h.node, &words);
      double am = h.total();
      out.push_back(Final{am + lm, am, lm, h.node, words});
    }
    std::stable_sort(out.begin(), out.end(), [](const Final& a, const Final& b) { return a.score > b.score; });
    return out;
  }

  // chars of a node, root first, into out (at most cap); returns the length
  int32_t spell(int32_t node, int32_t* out, int32_t cap) {
    int32_t d = nodes_[node].depth;
    int32_t v = node;
    for (int32_t i = d - 1; i >= 0; --i, v = nodes_[v].parent)
      if (i < cap) out[i] = nodes_[v].ch;
    return d;
  }

 private:
  int32_t num_tokens_;
  uint64_t base_;
  Options opt_;
  lm_fn lm_;
  int32_t max_n_;
  bool failed_ = false;
  Context& ctx_;
  bool has_lexicon_;
  std::vector<int32_t> gram_len_, gram_start_, chars_;
  // suffix trie of the grams (each gram's chars last first): edge -> node; node -> gram id, -1
  std::unordered_map<uint64_t, int32_t> suffix_next_;
  std::vector<int32_t> suffix_gram_{-1};
  std::unordered_map<uint64_t, int32_t> children_;  // prefix trie: edge(node, char) -> node
  std::vector<Node> nodes_;
  std::vector<Hyp> beam_;
};

}  // namespace

extern "C" {

// A decoding context: the lexicon (words as char ids, concatenated, offsets (n + 1,); lm: (n,)
// unigram ln P of each word for the look-ahead, or null) and an empty LM cache. Free it with
// slpbs_context_free. The LM cache is only valid for one LM scorer (its interned state ids).
void* slpbs_context_new(const int32_t* lex_chars, const int32_t* lex_offsets, int32_t lex_words,
                        const double* lex_lm, double lm_weight, int32_t num_chars) {
  Context* ctx = new Context();
  if (lex_words > 0) ctx->set_lexicon(lex_chars, lex_offsets, lex_words, lex_lm, lm_weight, num_chars);
  return ctx;
}

void slpbs_context_free(void* ctx) { delete static_cast<Context*>(ctx); }

// Decode one utterance.
//   log_probs    (T, V) float32, row-major; V = 1 + number of grams (blank = 0)
//   gram_chars   char ids of every gram, concatenated; gram g = gram_chars[off[g]:off[g+1]]
//   gram_offsets (V + 1,); off[0] = off[1] = 0 (the blank has no chars)
//   context      from slpbs_context_new (LM cache and lexicon kept across calls) or null;
//                unk_score is added once to a word outside the context's lexicon
//   nbest        hypotheses wanted; out_chars (nbest, max_len), out_lens/out_words (nbest,),
//                out_scores (nbest, 3): total, acoustic (ln), LM part (α·ln P + β·words)
// Returns the number of hypotheses written, -1 when the LM callback failed, -2 bad arguments.
int32_t slpbs_decode(const float* log_probs, int32_t T, int32_t V, const int32_t* gram_chars,
                     const int32_t* gram_offsets, int32_t num_chars, int32_t beam_size,
                     int32_t token_beam, double token_threshold, double beam_threshold,
                     double lm_weight, double word_score, int32_t lm_mode, int32_t space_id,
                     lm_fn lm, void* context, double unk_score, int32_t nbest, int32_t max_len,
                     int32_t* out_chars, int32_t* out_lens, int32_t* out_words,
                     double* out_scores) {
  if (T < 0 || V < 1 || beam_size < 1 || nbest < 1 || (lm_mode != 0 && lm == nullptr)) return -2;
  for (int32_t g = 1; g < V; ++g) {
    int32_t n = gram_offsets[g + 1] - gram_offsets[g];
    if (n < 1 || n > 7) return -2;
    for (int32_t j = gram_offsets[g]; j < gram_offsets[g + 1]; ++j)
      if (gram_chars[j] < 1 || gram_chars[j] > num_chars) return -2;  // the tries' keys need it
  }
  Options opt{beam_size, token_beam, token_threshold, beam_threshold, lm_weight, word_score,
              lm_mode, space_id, unk_score};
  Context local;
  Context& ctx = context ? *static_cast<Context*>(context) : local;
  Search s(gram_chars, gram_offsets, V, num_chars, opt, lm, ctx);
  s.run(log_probs, T, V);
  if (s.failed()) return -1;
  auto fin = s.finals();
  if (s.failed()) return -1;
  int32_t k = std::min<int32_t>(nbest, static_cast<int32_t>(fin.size()));
  for (int32_t i = 0; i < k; ++i) {
    int32_t len = s.spell(fin[i].node, out_chars + static_cast<int64_t>(i) * max_len, max_len);
    out_lens[i] = len;
    out_words[i] = fin[i].words;
    out_scores[3 * i] = fin[i].score;
    out_scores[3 * i + 1] = fin[i].am;
    out_scores[3 * i + 2] = fin[i].lm;
  }
  return k;
}

}  // extern "C"

// An importable (empty) module, so that the file is an ordinary extension of the package;
// speechlab.decode.prefix_beam finds it with importlib and opens it with ctypes.
static struct PyModuleDef slpbs_module = {PyModuleDef_HEAD_INIT, "_decode",
                                          "Prefix beam search (C ABI, used through ctypes).", -1,
                                          nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&slpbs_module); }
