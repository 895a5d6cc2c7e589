from easydict import EasyDict as edict

# Glint360K, MobileFaceNet, SGD over 2 accumulated batches, logs every 50 batches, its own seed
config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "mbf"
config.resume = True
config.output = "work_dirs/glint360k_mbf"
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 1e-4
config.batch_size = 128
config.gradient_acc = 2
config.lr = 0.1
config.verbose = 2000
config.frequent = 50
config.seed = 42
config.num_workers = 8
config.save_all_states = True
config.dali = False

config.rec = "/train_tmp/glint360k"
config.num_classes = 360232
config.num_image = 17091657
config.num_epoch = 20
config.warmup_epoch = 0
config.val_targets = ["lfw", "cfp_fp", "agedb_30"]
