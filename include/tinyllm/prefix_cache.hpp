// tinyllm/prefix_cache.hpp — prefix caching: the keys and values of prompts
// already computed, found again by their tokens, so that a request sharing a
// prefix with an earlier one (a system prompt, a few-shot preamble, the turns
// of a chat) starts from the cached blocks instead of recomputing them.
//
// The idea is SGLang's RadixAttention (Zheng et al., "SGLang: Efficient
// Execution of Structured Language Model Programs", 2024) on a paged KV cache
// (tinyllm/paged_kv.hpp): a tree over token ids whose nodes hold KV blocks. The
// keys and values of position p depend on tokens 0..p only, so two sequences
// that begin with the same tokens have the same cache there, and a block's
// contents are named by the whole token path from the root to it.
//
// Granularity. The tree steps one full block at a time: a node is one block of
// `block_size` tokens (its edge label) and the pool block holding their keys
// and values; its children continue with the next block_size tokens. A prefix
// is matched in whole blocks, and a partly filled last block is not cached (it
// would be written again). Matching at block granularity is what a paged cache
// allows without copying; SGLang matches single tokens when its pages hold one.
//
//     root ── [The tiger jumped out] ── [of a tree to] ── [get a drink because] ...   (block_size 4,
//                                    └─ [of the cave at] ── ...                        one word a token)
//
// Each cached block is held by the cache (one reference in the pool) and by
// every sequence using it. match() hands a sequence the blocks of the longest
// cached prefix; insert() adds a finished prompt's full blocks. Memory is
// bounded by `capacity` blocks: inserting past it first evicts the least
// recently used leaves that no sequence holds (reference count 1, the cache's
// own); evict(n) does the same when the pool runs short for a new request. A
// node is never evicted before its children, so every cached path stays whole.
//
// Depth. A path is as deep as its prompt is long in blocks: 100,000 tokens in
// blocks of one token are a chain of 100,000 nodes. So nothing here recurses
// along a path: the walks that visit the whole tree (finding a victim, clearing)
// keep the nodes still to visit on an explicit stack, and a node's destructor
// takes its descendants apart one at a time from a work list instead of
// letting each child's destructor destroy the next level. The stack of the
// calling thread stays the same size whatever the depth.
//
// Statistics: lookups, tokens looked up, tokens found (hits), blocks inserted
// and evicted — the hit rate a server reports.
#pragma once

#include <tinyllm/config.hpp>
#include <tinyllm/error.hpp>
#include <tinyllm/paged_kv.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

namespace tinyllm {

struct prefix_cache_stats {
    index_t lookups = 0;
    index_t lookup_tokens = 0;   // tokens offered to match()
    index_t hit_tokens = 0;      // of those, found in the cache
    index_t inserted_blocks = 0;
    index_t evicted_blocks = 0;
    double hit_rate() const {
        return lookup_tokens ? static_cast<double>(hit_tokens) / static_cast<double>(lookup_tokens) : 0.0;
    }
};

class prefix_cache {
public:
    // A cache of at most `capacity` blocks of `pool` (>= 0; 0 caches nothing).
    prefix_cache(kv_block_pool& pool, index_t capacity) : pool_(&pool), capacity_(capacity) {
        TINYLLM_EXPECT(capacity >= 0, "prefix_cache: capacity = ", capacity, " must not be negative");
    }
    prefix_cache(const prefix_cache&) = delete;
    prefix_cache& operator=(const prefix_cache&) = delete;
    ~prefix_cache() { clear(); }

    kv_block_pool* pool() const { return pool_; }
    index_t capacity() const { return capacity_; }
    index_t cached_blocks() const { return cached_; }
    const prefix_cache_stats& stats() const { return stats_; }

    // A block table holding the longest cached prefix of `tokens`, in whole
    // blocks (each block retained for the table), its length the tokens
    // matched. A caller that needs the logits of the last token passes the
    // tokens without it, so that at least one is left to compute.
    kv_block_table match(std::span<const token_id> tokens) {
        kv_block_table table(*pool_);
        ++stats_.lookups;
        stats_.lookup_tokens += static_cast<index_t>(tokens.size());
        const std::vector<node*> path = walk(tokens);
        std::vector<std::int32_t> blocks;
        for (node* n : path) {
            n->last_use = ++clock_;
            blocks.push_back(n->block);
        }
        table.adopt(blocks, static_cast<index_t>(path.size()) * pool_->block_size());
        stats_.hit_tokens += table.length();
        return table;
    }

    // Cache the full blocks of `table` that hold tokens[0, table.length()):
    // blocks already cached along the path are kept, new ones retained by the
    // cache (the table keeps its own references). Stops early, caching a
    // shorter prefix, when the capacity is reached and nothing can be evicted.
    // Returns the number of blocks newly cached.
    index_t insert(std::span<const token_id> tokens, const kv_block_table& table) {
        TINYLLM_EXPECT(table.pool() == pool_, "prefix_cache::insert: the table's blocks are in another pool");
        TINYLLM_EXPECT(static_cast<index_t>(tokens.size()) >= table.length(), "prefix_cache::insert: ",
                       tokens.size(), " tokens for a table of ", table.length(), " positions");
        const index_t bs = pool_->block_size(), full = table.length() / bs;
        node* at = &root_;
        index_t added = 0;
        for (index_t i = 0; i < full; ++i) {
            const std::vector<token_id> key(tokens.begin() + i * bs, tokens.begin() + (i + 1) * bs);
            const std::int32_t block = table.blocks()[static_cast<std::size_t>(i)];
            auto it = at->children.find(key);
            if (it == at->children.end()) {
                if (cached_ >= capacity_ && evict_one(at) == 0) break;
                auto child = std::make_unique<node>();
                child->parent = at;
                child->key = key;
                child->block = block;
                pool_->retain(block);
                ++cached_, ++added, ++stats_.inserted_blocks;
                it = at->children.emplace(key, std::move(child)).first;
            }
            // A different block with the same contents (computed twice before either was
            // cached) stays the sequence's own; the cached one serves later requests.
            it->second->last_use = ++clock_;
            at = it->second.get();
        }
        return added;
    }

    // Free up to `blocks` pool blocks by evicting least recently used leaves no
    // sequence holds. Returns how many were freed.
    index_t evict(index_t blocks) {
        index_t freed = 0;
        while (freed < blocks && evict_one(nullptr) > 0) ++freed;
        return freed;
    }

    // Drop every cached block (the sequences holding some keep them).
    void clear() {
        release_all();
        root_.children.clear();  // ~node takes the tree apart without recursing
        cached_ = 0;
    }

private:
    struct node {
        node* parent = nullptr;
        std::vector<token_id> key;  // the block's tokens
        std::int32_t block = -1;
        std::uint64_t last_use = 0;
        std::map<std::vector<token_id>, std::unique_ptr<node>> children;

        node() = default;
        node(const node&) = delete;
        node& operator=(const node&) = delete;
        // Left to itself, destroying a node destroys its children, each of which
        // destroys its own: one nested call per level, a stack overflow on a
        // long chain. Instead the descendants are moved out into a work list and
        // destroyed one by one, each after its own children have been moved out,
        // so that no destructor here has children left to recurse into.
        ~node() {
            std::vector<std::unique_ptr<node>> doomed;
            const auto take_children = [&doomed](node& n) {
                for (auto& [key, child] : n.children) doomed.push_back(std::move(child));
                n.children.clear();
            };
            take_children(*this);
            while (!doomed.empty()) {
                std::unique_ptr<node> n = std::move(doomed.back());
                doomed.pop_back();
                take_children(*n);
            }  // n, childless now, is destroyed here
        }
    };

    // The nodes along the longest cached path of whole blocks of `tokens`.
    std::vector<node*> walk(std::span<const token_id> tokens) {
        const index_t bs = pool_->block_size();
        std::vector<node*> path;
        node* at = &root_;
        for (index_t i = 0; (i + 1) * bs <= static_cast<index_t>(tokens.size()); ++i) {
            const std::vector<token_id> key(tokens.begin() + i * bs, tokens.begin() + (i + 1) * bs);
            const auto it = at->children.find(key);
            if (it == at->children.end()) break;
            at = it->second.get();
            path.push_back(at);
        }
        return path;
    }

    // Evict the least recently used leaf held by the cache alone, never `keep`
    // (the node an insert is extending; its ancestors have children, so are no leaves).
    // Returns 1 if a block was freed, 0 if none could be.
    index_t evict_one(const node* keep) {
        node* victim = nullptr;
        find_victim(root_, keep, victim);
        if (!victim) return 0;
        pool_->release(victim->block);
        --cached_;
        ++stats_.evicted_blocks;
        victim->parent->children.erase(victim->key);
        return 1;
    }
    // Every node is visited once, depth first, from an explicit stack (see the top: no recursion).
    void find_victim(node& root, const node* keep, node*& best) {
        std::vector<node*> stack{&root};
        while (!stack.empty()) {
            node* at = stack.back();
            stack.pop_back();
            for (auto& [key, child] : at->children) {
                if (child->children.empty()) {
                    if (child.get() != keep && pool_->ref_count(child->block) == 1 &&
                        (!best || child->last_use < best->last_use))
                        best = child.get();
                } else {
                    stack.push_back(child.get());
                }
            }
        }
    }
    // The cache's reference to every cached block, given back (the nodes stay; clear() drops them).
    void release_all() {
        std::vector<node*> stack{&root_};
        while (!stack.empty()) {
            node* at = stack.back();
            stack.pop_back();
            for (auto& [key, child] : at->children) {
                pool_->release(child->block);
                stack.push_back(child.get());
            }
        }
    }

    kv_block_pool* pool_;
    index_t capacity_;
    index_t cached_ = 0;
    std::uint64_t clock_ = 0;
    node root_;
    prefix_cache_stats stats_;
};

}  // namespace tinyllm
