"""The generated visual world: seeded scenes, their images, the paper's task mix about them, and the files."""
